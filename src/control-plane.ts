/**
 * Builds and starts a control plane: database (external or embedded),
 * migrations, LISTEN connection, reaper, and the API server.
 */
import { setMaxListeners } from "node:events";
import { routes } from "./api/routes.js";
import { buildServer } from "./api/server.js";
import type { ControlPlaneConfig } from "./config/config.js";
import { LeaseService } from "./leases/lease-service.js";
import { startReaper } from "./leases/reaper.js";
import type { Logger } from "./logger.js";
import { migrate } from "./storage/data-source.js";
import { Db } from "./storage/db.js";
import { Notifications } from "./storage/notifications.js";
import { resolveDatabase } from "./storage/resolve-database.js";

export interface ControlPlane {
  /** Base URL of the API. */
  url: string;
  /** The database in use (embedded or not). */
  databaseUrl: string;
  db: Db;
  /** Stops serving, ends streams and long polls, closes the database. */
  close(): Promise<void>;
}

/** Starts a control plane with `config`. */
export async function startControlPlane(
  config: Readonly<ControlPlaneConfig>,
  log: Logger,
): Promise<ControlPlane> {
  const database = await resolveDatabase({
    databaseUrl: config.databaseUrl,
    dataDir: config.dataDir,
    log: (msg) => log.info(msg),
  });
  const cleanup: Array<() => Promise<void>> = [() => database.stop()];
  // Last pushed runs first, once: a second close() gets the first one's promise.
  let closing: Promise<void> | undefined;
  const closeAll = () => {
    closing ??= (async () => {
      for (const fn of cleanup.toReversed())
        await fn().catch((e) => log.error({ err: e }, "shutdown step failed"));
    })();
    return closing;
  };
  try {
    const applied = await migrate(database.url);
    if (applied.length > 0) log.info({ migrations: applied }, "migrations applied");
    const timeouts = {
      acquireTimeoutMs: config.dbAcquireTimeoutMs,
      statementTimeoutMs: config.dbStatementTimeoutMs,
    };
    const db = await Db.connect(database.url, {
      general: { size: config.dbPoolSize, name: "fusillade-control-plane", ...timeouts },
      dispatch: { size: config.dbDispatchPoolSize, name: "fusillade-dispatch", ...timeouts },
      onPoolError: (e) => log.warn({ err: e }, "pooled database connection lost"),
    });
    cleanup.push(() => db.close());
    const notifications = new Notifications(database.url, {
      checkIntervalMs: config.listenCheckIntervalMs,
      onError: (e) => log.warn({ err: e }, "LISTEN connection lost"),
    });
    await notifications.start();
    cleanup.push(() => notifications.close());
    const shutdown = new AbortController();
    // Every long poll and stream listens on it.
    setMaxListeners(0, shutdown.signal);
    const deps = { db, config, log, notifications, shutdownSignal: shutdown.signal };
    // The lease path gets its own pool: client traffic on `db` cannot starve renewals.
    const leases = new LeaseService(db.dispatch, notifications, config);
    const reaper = startReaper(db, config.reapIntervalMs, log);
    cleanup.push(() => reaper.stop());
    const server = await buildServer({
      routes: routes(deps, leases),
      shutdownSignal: shutdown.signal,
      maxMessageBytes: config.maxMessageBytes,
      logError: (e) => log.error({ err: e }, "request failed"),
    }).listen(config.host, config.port);
    cleanup.push(() => server.close());
    // Runs first on close: long polls and streams end before the server waits for them.
    cleanup.push(async () => shutdown.abort());
    log.info({ url: server.url, embeddedDatabase: database.embedded }, "control plane listening");
    return { url: server.url, databaseUrl: database.url, db, close: closeAll };
  } catch (e) {
    await closeAll();
    throw e;
  }
}
