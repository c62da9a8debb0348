/**
 * Server commands: serve (control plane + dispatcher), control-plane,
 * dispatcher, migrate, secrets. Only their flags live here; what they run is
 * in ./server-run.ts, imported when one of them runs, so that the client
 * commands start without loading the servers.
 */
import type { Command } from "commander";
import type { ControlPlaneFlags } from "../config/config.js";
import type { DispatcherFlags } from "../config/dispatcher-config.js";

const run = () => import("./server-run.js");

function controlPlaneOptions(cmd: Command): Command {
  return cmd
    .option("--listen <host:port>", "address to serve the API on (env FUSILLADE_LISTEN)", undefined)
    .option(
      "--data-dir <dir>",
      "embedded Postgres data folder when DATABASE_URL is unset (env FUSILLADE_DATA_DIR)",
    )
    .option("--database-url <url>", "Postgres URL (env DATABASE_URL); default: embedded Postgres")
    .option(
      "--default-limit <n>",
      "concurrency limit of models with none set (env FUSILLADE_DEFAULT_LIMIT)",
    )
    .option("--lease-ttl <duration>", "lease lifetime, e.g. 30s (env FUSILLADE_LEASE_TTL)")
    .option(
      "--retention <duration>",
      "how long a finished batch (unless created with its own) and a file no batch came from are kept, e.g. 30d, 12h, 10s; 0 keeps them until deleted (env FUSILLADE_RETENTION; default 30d; docs/operations.md)",
    )
    .option(
      "--allowed-endpoints <origins>",
      "comma-separated origins files may name, * for subdomains, e.g. https://api.openai.com,https://*.example.com:* (env FUSILLADE_ALLOWED_ENDPOINTS; default any, but with an admin token public addresses only: never loopback, private, link-local or metadata ones, at upload and after DNS; docs/trust.md)",
    )
    .option(
      "--secret-key-file <file>",
      "file with the key that encrypts upstream API keys (env FUSILLADE_SECRET_KEY_FILE, or the key in FUSILLADE_SECRET_KEY; default: secret.key in the data dir, made on first start)",
    )
    .option("--tls-cert <file>", "PEM certificate chain: serve TLS (env FUSILLADE_TLS_CERT)")
    .option("--tls-key <file>", "PEM private key of --tls-cert (env FUSILLADE_TLS_KEY)")
    .option(
      "--admin-token-file <file>",
      "file whose first line is the admin token (env FUSILLADE_ADMIN_TOKEN_FILE, or the token in FUSILLADE_ADMIN_TOKEN); without one the server accepts calls from loopback only: docs/trust.md",
    )
    .option(
      "--log-level <level>",
      "trace, debug, info, warn, error, silent (env FUSILLADE_LOG_LEVEL)",
    )
    .option(
      "--metrics-listen <host:port>",
      "serve /metrics here, open, instead of on the API port with an admin credential (env FUSILLADE_METRICS_LISTEN)",
    );
}

/** Options of a dispatcher; `serve` takes them too, except --control-plane (it is its own). */
function dispatcherOptions(cmd: Command): Command {
  return cmd
    .option(
      "--capacity <n>",
      "most requests in flight from this dispatcher, across models (env FUSILLADE_CAPACITY; default 10000)",
    )
    .option(
      "--prefetch <share>",
      "claims buffered per model beyond its slots, as a share of them (env FUSILLADE_PREFETCH; default 0.5)",
    )
    .option("--models <a,b>", "serve only these models (env FUSILLADE_MODELS; default all)")
    .option(
      "--id <name>",
      "dispatcher name in leases and logs (env FUSILLADE_DISPATCHER_ID; default host-pid-rand)",
    )
    .option(
      "--acquire-wait <duration>",
      "long-poll wait for work (env FUSILLADE_ACQUIRE_WAIT; default 20s)",
    )
    .option(
      "--renew-interval <duration>",
      "lease renewal period (env FUSILLADE_RENEW_INTERVAL; default from the lease TTL)",
    )
    .option(
      "--fence-margin <duration>",
      "self-fencing safety margin (env FUSILLADE_FENCE_MARGIN; default max(2s, ttl/5))",
    )
    .option(
      "--shutdown-grace <duration>",
      "on SIGTERM, time for in-flight requests to finish (env FUSILLADE_SHUTDOWN_GRACE; default 30s)",
    )
    .option(
      "--connect-timeout <duration>",
      "upstream connect timeout (env FUSILLADE_CONNECT_TIMEOUT; default 10s)",
    )
    .option(
      "--first-byte-timeout <duration>",
      "upstream time to response headers (env FUSILLADE_FIRST_BYTE_TIMEOUT; default 10m)",
    )
    .option(
      "--total-timeout <duration>",
      "upstream time for a whole attempt (env FUSILLADE_TOTAL_TIMEOUT; default 15m)",
    )
    .option(
      "--max-response-bytes <n>",
      "largest response body accepted (env FUSILLADE_MAX_RESPONSE_BYTES; default 32 MiB)",
    );
}

/** Registers serve, control-plane, dispatcher and migrate on `program`. */
export function registerServerCommands(program: Command): void {
  dispatcherOptions(
    controlPlaneOptions(
      program
        .command("serve")
        .description(
          "run a control plane and a dispatcher in one process (embedded Postgres by default)",
        ),
    ),
  ).action(async (flags: ControlPlaneFlags & DispatcherFlags) => (await run()).runServe(flags));

  controlPlaneOptions(
    program
      .command("control-plane")
      .description("run the control plane (the API and the lease service)"),
  ).action(async (flags: ControlPlaneFlags) => (await run()).runControlPlane(flags));

  dispatcherOptions(
    program
      .command("dispatcher")
      .description("take leases from a control plane and send the requests upstream")
      .option(
        "--control-plane <url>",
        "the control plane's URL, e.g. http://127.0.0.1:8080 (env FUSILLADE_CONTROL_PLANE)",
      )
      .option(
        "--token <token>",
        "a dispatcher (or admin) token for the control plane (env FUSILLADE_TOKEN; prefer the variable: flags show in ps)",
      )
      .option(
        "--ca <file>",
        "PEM CA certificates to trust for an https:// control plane (env FUSILLADE_CA)",
      )
      .option(
        "--allowed-endpoints <origins>",
        "hosts of these origins may resolve to any address; with a token, others must be public, never loopback, private, link-local or metadata (env FUSILLADE_ALLOWED_ENDPOINTS; give it the control plane's list; docs/trust.md)",
      )
      .option(
        "--log-level <level>",
        "trace, debug, info, warn, error, silent (env FUSILLADE_LOG_LEVEL)",
      )
      .option(
        "--metrics-listen <host:port>",
        "serve this dispatcher's /metrics here (env FUSILLADE_METRICS_LISTEN)",
      ),
  ).action(async (flags: DispatcherFlags) => (await run()).runDispatcher(flags));

  program
    .command("migrate")
    .description("apply database migrations and exit")
    .option("--data-dir <dir>", "embedded Postgres data folder when DATABASE_URL is unset")
    .option("--database-url <url>", "Postgres URL (env DATABASE_URL)")
    .action(async (flags: ControlPlaneFlags) => (await run()).runMigrate(flags));

  const secrets = program
    .command("secrets")
    .description("the key that encrypts upstream API keys at rest (docs/trust.md)");
  secrets
    .command("rotate")
    .description(
      "re-encrypt every stored API key under the current key (FUSILLADE_SECRET_KEY or --secret-key-file); the old key goes in FUSILLADE_PREVIOUS_SECRET_KEYS",
    )
    .option("--data-dir <dir>", "embedded Postgres data folder when DATABASE_URL is unset")
    .option("--database-url <url>", "Postgres URL (env DATABASE_URL)")
    .option("--secret-key-file <file>", "file holding the new key (env FUSILLADE_SECRET_KEY_FILE)")
    .action(async (flags: ControlPlaneFlags) => (await run()).runSecretsRotate(flags));
}
