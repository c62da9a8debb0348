/**
 * Builds and starts a control plane: database (external or embedded),
 * migrations, LISTEN connection, reaper, and the API server.
 */
import { setMaxListeners } from "node:events";
import { routes } from "./api/routes.js";
import { buildServer } from "./api/server.js";
import { Authenticator, isLoopbackListen } from "./auth/authenticator.js";
import { loadKeyring } from "./auth/secrets.js";
import { newToken } from "./auth/tokens.js";
import { ConfigError, type ControlPlaneConfig } from "./config/config.js";
import type { EndpointPolicy } from "./domain/endpoints.js";
import { ForbiddenAddresses } from "./domain/forbidden-addresses.js";
import { hostAddresses } from "./http/outbound-guard.js";
import { LeaseService } from "./leases/lease-service.js";
import { startReaper } from "./leases/reaper.js";
import type { Logger } from "./logger.js";
import { BatchLifecycle } from "./metrics/batch-lifecycle.js";
import { ControlPlaneMetrics } from "./metrics/control-plane-metrics.js";
import { Fleet } from "./metrics/fleet.js";
import { apiMetricsRoute, type MetricsSource, startMetricsServer } from "./metrics/metrics-http.js";
import { openaiRoute } from "./openai/route.js";
import { reencrypt } from "./storage/api-keys.js";
import { tokenStore } from "./storage/api-tokens.js";
import { migrate } from "./storage/data-source.js";
import { Db } from "./storage/db.js";
import { Notifications } from "./storage/notifications.js";
import { resolveDatabase } from "./storage/resolve-database.js";
import { dashboardRoute } from "./web/dashboard-route.js";

export interface ControlPlane {
  /** Base URL of the API. */
  url: string;
  /**
   * A credential for a dispatcher this process starts itself (serve's
   * thread): accepted by this control plane only, never stored or printed.
   */
  internalDispatcherToken(): string;
  /** The database in use (embedded or not). */
  databaseUrl: string;
  db: Db;
  /** The control plane's metrics (its registry; serve adds its dispatcher's text). */
  metrics: ControlPlaneMetrics;
  /** Adds a source to /metrics (serve: the dispatcher thread's registry). */
  addMetricsSource(source: MetricsSource): void;
  /** Where /metrics is served without a token (--metrics-listen), when it is. */
  metricsUrl: string | undefined;
  /** Stops serving, ends streams and long polls, closes the database. */
  close(): Promise<void>;
}

/** Starts a control plane with `config`. */
export async function startControlPlane(
  config: Readonly<ControlPlaneConfig>,
  log: Logger,
): Promise<ControlPlane> {
  // Before anything starts: a server open to the network must check tokens.
  const localMode = config.adminToken === undefined;
  if (localMode && !isLoopbackListen(config.host)) {
    throw new ConfigError(
      `refusing to listen on ${config.host} without an admin token: anyone who can reach the port could read every batch and every upstream API key. Set FUSILLADE_ADMIN_TOKEN (or --admin-token-file FILE), or listen on 127.0.0.1 (docs/trust.md)`,
    );
  }
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
    const { keyring, made } = await loadKeyring({ ...config.secretKey, dataDir: config.dataDir });
    if (made !== undefined) {
      log.info({ file: made }, "made the key that encrypts upstream API keys");
      if (!database.embedded) {
        log.warn(
          { file: made },
          "every control plane on this database needs this same key: set FUSILLADE_SECRET_KEY (or --secret-key-file) on each",
        );
      }
    }
    const sealed = await reencrypt(db, keyring, true);
    if (sealed > 0)
      log.info({ keys: sealed }, "encrypted API keys stored before encryption existed");
    const metrics = new ControlPlaneMetrics(db, config.defaultLimit);
    const metricsSources: MetricsSource[] = [() => metrics.text()];
    const lifecycle = new BatchLifecycle(db, log, metrics);
    // Gone after two lease lifetimes without a call (a minute at least: long polls).
    const fleet = new Fleet(log, Math.max(2 * config.leaseTtlMs, 60_000));
    cleanup.push(async () => fleet.close());
    metrics.countDispatchers(() => fleet.size);
    lifecycle.start(notifications);
    cleanup.push(async () => lifecycle.close());
    const auth = new Authenticator(tokenStore(db, notifications), {
      adminToken: config.adminToken,
      localMode,
    });
    cleanup.push(async () => auth.close());
    const deps = {
      db,
      config,
      log,
      notifications,
      shutdownSignal: shutdown.signal,
      keyring,
      authenticate: (authorization: string | null, host: string | null) =>
        auth.authenticate(authorization, host),
      tokensChanged: () => auth.forget(),
      endpointPolicy: () => policy,
      lifecycle,
      metrics,
      fleet,
    };
    // With tokens, files name public addresses only (its own are loopback,
    // private or on its interfaces), unless listed.
    const policy: EndpointPolicy = {
      allow: config.allowedEndpoints,
      denyPrivate: !localMode,
      forbidden: new ForbiddenAddresses(hostAddresses()),
    };
    // The lease path gets its own pool: client traffic on `db` cannot starve renewals.
    const leases = new LeaseService(db.dispatch, notifications, config, keyring, metrics);
    const reaper = startReaper(db, config.reapIntervalMs, log, (c) => metrics.reaped(c));
    cleanup.push(() => reaper.stop());
    const server = await buildServer({
      auth,
      tls: config.tls,
      routes: routes(deps, leases),
      shutdownSignal: shutdown.signal,
      maxMessageBytes: config.maxMessageBytes,
      logError: (e) => log.error({ err: e }, "request failed"),
      connections: config.connections,
      onConnectionClosed: (reason, client) => {
        // Refusals and evictions mean the caps are reached: worth a line each.
        if (reason === "refused" || reason === "evicted") {
          log.warn({ reason, client }, "connection cap reached: a connection was closed");
        } else log.debug({ reason, client }, "connection closed by the server");
      },
      plainRoutes: [
        apiMetricsRoute(metricsSources, auth),
        dashboardRoute(config.webDir),
        openaiRoute(deps, auth),
      ],
    }).listen(config.host, config.port);
    cleanup.push(() => server.close());
    let metricsUrl: string | undefined;
    if (config.metricsListen !== undefined) {
      const ms = await startMetricsServer(
        config.metricsListen.host,
        config.metricsListen.port,
        metricsSources,
      );
      cleanup.push(() => ms.close());
      metricsUrl = ms.url;
      log.info({ url: ms.url }, "metrics listening (no token needed there)");
    }
    // Runs first on close: long polls and streams end before the server waits for them.
    cleanup.push(async () => shutdown.abort());
    log.info({ url: server.url, embeddedDatabase: database.embedded }, "control plane listening");
    log.info(
      localMode
        ? "no admin token configured: local mode, calls without a token are accepted from loopback only (docs/trust.md)"
        : "admin token configured: token mode, every call needs a token (admin, client or dispatcher; docs/trust.md)",
    );
    let internal: string | undefined;
    return {
      url: server.url,
      databaseUrl: database.url,
      db,
      metrics,
      metricsUrl,
      addMetricsSource: (source) => metricsSources.push(source),
      close: closeAll,
      internalDispatcherToken() {
        if (internal === undefined) {
          internal = newToken();
          auth.addCredential(internal, { role: "dispatcher", tenant: null, source: "serve" });
        }
        return internal;
      },
    };
  } catch (e) {
    await closeAll();
    throw e;
  }
}
