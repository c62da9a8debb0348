/** Server commands: serve (control plane + dispatcher), control-plane, dispatcher, migrate. */
import type { Command } from "commander";
import { loadKeyring } from "../auth/secrets.js";
import {
  ConfigError,
  type ControlPlaneFlags,
  controlPlaneConfig,
  metricsListenOf,
} from "../config/config.js";
import { type DispatcherFlags, dispatcherConfig } from "../config/dispatcher-config.js";
import { startControlPlane } from "../control-plane.js";
import { startDispatcher } from "../dispatcher/dispatcher.js";
import { startDispatcherThread } from "../dispatcher/thread.js";
import { type Logger, makeLogger } from "../logger.js";
import { DispatcherMetrics } from "../metrics/dispatcher-metrics.js";
import { startMetricsServer } from "../metrics/metrics-http.js";
import { keyCounts, reencrypt } from "../storage/api-keys.js";
import { migrate } from "../storage/data-source.js";
import { Db } from "../storage/db.js";
import { resolveDatabase } from "../storage/resolve-database.js";

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

/** Runs until SIGINT/SIGTERM, then calls `stop`. A second signal exits at once. */
export function untilSignal(stop: () => Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    const onSignal = () => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      const force = () => process.exit(130);
      process.once("SIGINT", force);
      process.once("SIGTERM", force);
      stop().finally(resolve);
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  });
}

/** How long a clean stop after an unexpected error may take before the process exits anyway. */
const FATAL_STOP_GRACE_MS = 10_000;

/**
 * An error nothing caught (outside any request: those are answered, src/api/server.ts) is
 * logged and ends the process through `stop()` — the embedded Postgres and the dispatcher's
 * claims with it — rather than with a bare stack trace. Returns a setter for `stop`, known
 * only once the services run (before that, process.exit's hook stops the embedded Postgres).
 */
function stopOnUnexpectedError(log: Logger): (stop: () => Promise<void>) => void {
  let stop: () => Promise<void> = async () => {};
  let stopping = false;
  const onError = (err: unknown) => {
    log.fatal({ err }, "unexpected error: stopping");
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(1), FATAL_STOP_GRACE_MS).unref();
    void stop()
      .catch((e: unknown) => log.error({ err: e }, "stopping after an unexpected error failed"))
      .finally(() => process.exit(1));
  };
  process.on("uncaughtException", onError);
  process.on("unhandledRejection", onError);
  return (s) => {
    stop = s;
  };
}

async function runControlPlane(flags: ControlPlaneFlags): Promise<void> {
  const config = controlPlaneConfig(flags);
  const log = makeLogger(config.logLevel);
  const onFatalStop = stopOnUnexpectedError(log);
  const cp = await startControlPlane(config, log);
  onFatalStop(() => cp.close());
  process.stderr.write(`fusillade: control plane listening on ${cp.url}\n`);
  await untilSignal(() => cp.close());
}

async function runDispatcher(flags: DispatcherFlags & { metricsListen?: string }): Promise<void> {
  const config = dispatcherConfig(flags);
  const metricsAt = metricsListenOf(flags);
  const log = makeLogger(config.logLevel);
  const onFatalStop = stopOnUnexpectedError(log);
  const metrics = new DispatcherMetrics({ processMetrics: true });
  const server =
    metricsAt === undefined
      ? undefined
      : await startMetricsServer(metricsAt.host, metricsAt.port, [() => metrics.text()]);
  if (server !== undefined) log.info({ url: server.url }, "metrics listening");
  const dispatcher = startDispatcher(config, log, { metrics });
  process.stderr.write(
    `fusillade: dispatcher ${config.id} taking work from ${config.controlPlaneUrl}\n`,
  );
  const stop = async () => {
    await dispatcher.stop();
    await server?.close();
  };
  onFatalStop(stop);
  await untilSignal(stop);
}

/** The URL to reach a server listening on every address (0.0.0.0, ::) from this host. */
function loopback(url: string): string {
  const u = new URL(url);
  if (u.hostname === "0.0.0.0") u.hostname = "127.0.0.1";
  if (u.hostname === "[::]") u.hostname = "[::1]";
  return u.origin;
}

/**
 * Control plane and dispatcher in one process; the dispatcher runs on its own
 * thread (an event loop each: bench/RESULTS.md) and talks to the control
 * plane over its port.
 */
async function runServe(flags: ControlPlaneFlags & DispatcherFlags): Promise<void> {
  const cpConfig = controlPlaneConfig(flags);
  const log = makeLogger(cpConfig.logLevel);
  const onFatalStop = stopOnUnexpectedError(log);
  const cp = await startControlPlane(cpConfig, log);
  onFatalStop(() => cp.close());
  let dispatcher: ReturnType<typeof startDispatcher>;
  try {
    const config = {
      ...dispatcherConfig({
        ...flags,
        controlPlane: loopback(cp.url),
        logLevel: cpConfig.logLevel,
        // Its own credential, made by the control plane for this process only.
        token: cp.internalDispatcherToken(),
      }),
      // Over loopback to its own port: the certificate names the public host.
      insecureLoopbackTls: cpConfig.tls !== undefined,
      // Its token is internal: what matters is whether the server is shared.
      denyPrivateNetworks: cpConfig.adminToken !== undefined,
    };
    dispatcher = startDispatcherThread(config, log, (e) => {
      // Serving without a dispatcher would accept batches and never run them.
      log.fatal({ err: e }, "the dispatcher stopped unexpectedly; stopping the server");
      void cp.close().finally(() => process.exit(1));
    });
  } catch (e) {
    await cp.close();
    throw e;
  }
  // One /metrics for the process: the dispatcher thread's registry after the control plane's.
  cp.addMetricsSource(() => dispatcher.metrics());
  process.stderr.write(
    `fusillade: serving on ${cp.url} (control plane and dispatcher ${dispatcher.id})\n`,
  );
  // Dispatcher first: its last reports need the control plane.
  const stop = async () => {
    await dispatcher.stop();
    await cp.close();
  };
  onFatalStop(stop);
  await untilSignal(stop);
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
  ).action(async (flags: ControlPlaneFlags & DispatcherFlags) => {
    await runServe(flags);
  });

  controlPlaneOptions(
    program
      .command("control-plane")
      .description("run the control plane (the API and the lease service)"),
  ).action(async (flags: ControlPlaneFlags) => {
    await runControlPlane(flags);
  });

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
  ).action(async (flags: DispatcherFlags) => {
    await runDispatcher(flags);
  });

  program
    .command("migrate")
    .description("apply database migrations and exit")
    .option("--data-dir <dir>", "embedded Postgres data folder when DATABASE_URL is unset")
    .option("--database-url <url>", "Postgres URL (env DATABASE_URL)")
    .action(async (flags: ControlPlaneFlags) => {
      const config = controlPlaneConfig(flags);
      const database = await resolveDatabase({
        databaseUrl: config.databaseUrl,
        dataDir: config.dataDir,
      });
      try {
        const ran = await migrate(database.url);
        process.stdout.write(ran.length === 0 ? "up to date\n" : `applied: ${ran.join(", ")}\n`);
      } finally {
        await database.stop();
      }
    });

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
    .action(async (flags: ControlPlaneFlags) => {
      const config = controlPlaneConfig(flags);
      const { keyring } = await loadKeyring({ ...config.secretKey, dataDir: config.dataDir });
      const database = await resolveDatabase({
        databaseUrl: config.databaseUrl,
        dataDir: config.dataDir,
      });
      try {
        await migrate(database.url);
        const db = await Db.connect(database.url, {
          general: {
            size: 2,
            name: "fusillade-secrets",
            acquireTimeoutMs: 0,
            statementTimeoutMs: 0,
          },
        });
        try {
          const n = await reencrypt(db, keyring);
          const counts = await keyCounts(db);
          process.stdout.write(
            `re-encrypted ${n} API key${n === 1 ? "" : "s"} under key ${keyring.currentId}\n` +
              counts.map((c) => `  key ${c.keyId}: ${c.count}\n`).join(""),
          );
        } finally {
          await db.close();
        }
      } finally {
        await database.stop();
      }
    });
}

export { ConfigError };
