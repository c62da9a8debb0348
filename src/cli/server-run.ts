/**
 * What the server commands run. ./server-commands.ts registers them and
 * imports this module only when one of them is invoked: it loads the control
 * plane, the dispatcher and storage (~0.4 s of CPU), which a client command
 * such as `submit` or `results` does not need.
 */
import { loadKeyring } from "../auth/secrets.js";
import { type ControlPlaneFlags, controlPlaneConfig, metricsListenOf } from "../config/config.js";
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

export async function runControlPlane(flags: ControlPlaneFlags): Promise<void> {
  const config = controlPlaneConfig(flags);
  const log = makeLogger(config.logLevel);
  const onFatalStop = stopOnUnexpectedError(log);
  const cp = await startControlPlane(config, log);
  onFatalStop(() => cp.close());
  process.stderr.write(`fusillade: control plane listening on ${cp.url}\n`);
  await untilSignal(() => cp.close());
}

export async function runDispatcher(
  flags: DispatcherFlags & { metricsListen?: string },
): Promise<void> {
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

/**
 * Control plane and dispatcher in one process; the dispatcher runs on its own
 * thread (an event loop each: bench/RESULTS.md) and calls the control plane
 * over a MessagePort, not over its HTTP/2 port (docs/architecture.md, "serve's
 * two threads").
 */
export async function runServe(flags: ControlPlaneFlags & DispatcherFlags): Promise<void> {
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
        // Named in its logs; its calls take the port below.
        controlPlane: cp.url,
        logLevel: cpConfig.logLevel,
        // Its own credential, made by the control plane for this process only.
        token: cp.internalDispatcherToken(),
      }),
      // Its token is internal: what matters is whether the server is shared.
      denyPrivateNetworks: cpConfig.adminToken !== undefined,
    };
    dispatcher = startDispatcherThread(config, log, {
      controlPlanePort: cp.internalDispatcherPort(),
      onCrash: (e) => {
        // Serving without a dispatcher would accept batches and never run them.
        log.fatal({ err: e }, "the dispatcher stopped unexpectedly; stopping the server");
        void cp.close().finally(() => process.exit(1));
      },
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

/** `migrate`: apply the migrations and exit. */
export async function runMigrate(flags: ControlPlaneFlags): Promise<void> {
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
}

/** `secrets rotate`: re-encrypt every stored API key under the current key. */
export async function runSecretsRotate(flags: ControlPlaneFlags): Promise<void> {
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
}
