/** Server commands: serve, control-plane, migrate (dispatcher is added by the leases work). */
import type { Command } from "commander";
import { ConfigError, type ControlPlaneFlags, controlPlaneConfig } from "../config/config.js";
import { startControlPlane } from "../control-plane.js";
import { makeLogger } from "../logger.js";
import { migrate } from "../storage/data-source.js";
import { resolveDatabase } from "../storage/resolve-database.js";

function controlPlaneOptions(cmd: Command): Command {
  return cmd
    .option("--listen <host:port>", "address to serve the API on (env FUSILLADE_LISTEN)", undefined)
    .option("--data-dir <dir>", "embedded Postgres data folder when DATABASE_URL is unset (env FUSILLADE_DATA_DIR)")
    .option("--database-url <url>", "Postgres URL (env DATABASE_URL); default: embedded Postgres")
    .option("--default-limit <n>", "concurrency limit of models with none set (env FUSILLADE_DEFAULT_LIMIT)")
    .option("--lease-ttl <duration>", "lease lifetime, e.g. 30s (env FUSILLADE_LEASE_TTL)")
    .option("--log-level <level>", "trace, debug, info, warn, error, silent (env FUSILLADE_LOG_LEVEL)");
}

/** Runs until SIGINT/SIGTERM, then calls `stop`. */
export function untilSignal(stop: () => Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    const onSignal = () => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      stop().finally(resolve);
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  });
}

async function runControlPlane(flags: ControlPlaneFlags): Promise<void> {
  const config = controlPlaneConfig(flags);
  const log = makeLogger(config.logLevel);
  const cp = await startControlPlane(config, log);
  process.stderr.write(`fusillade: control plane listening on ${cp.url}\n`);
  await untilSignal(() => cp.close());
}

/** Registers serve, control-plane and migrate on `program`. */
export function registerServerCommands(program: Command): void {
  controlPlaneOptions(
    program
      .command("serve")
      .description("run a control plane and a dispatcher in one process (embedded Postgres by default)"),
  ).action(async (flags: ControlPlaneFlags) => {
    await runControlPlane(flags);
  });

  controlPlaneOptions(
    program.command("control-plane").description("run the control plane (the API and the lease service)"),
  ).action(async (flags: ControlPlaneFlags) => {
    await runControlPlane(flags);
  });

  program
    .command("migrate")
    .description("apply database migrations and exit")
    .option("--data-dir <dir>", "embedded Postgres data folder when DATABASE_URL is unset")
    .option("--database-url <url>", "Postgres URL (env DATABASE_URL)")
    .action(async (flags: ControlPlaneFlags) => {
      const config = controlPlaneConfig(flags);
      const database = await resolveDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir });
      try {
        const ran = await migrate(database.url);
        process.stdout.write(ran.length === 0 ? "up to date\n" : `applied: ${ran.join(", ")}\n`);
      } finally {
        await database.stop();
      }
    });
}

export { ConfigError };
