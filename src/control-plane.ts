/**
 * Builds and starts a control plane: database (external or embedded),
 * migrations, LISTEN connection, reaper, retention, and the API server.
 */
import { setMaxListeners } from "node:events";
import { MessageChannel, type MessagePort } from "node:worker_threads";
import type { ApiDeps } from "./api/deps.js";
import { dispatchMethods } from "./api/dispatch.js";
import { servePort } from "./api/port-server.js";
import { routes } from "./api/routes.js";
import { apiInterceptors, buildServer } from "./api/server.js";
import { Authenticator, isLoopbackListen } from "./auth/authenticator.js";
import { loadKeyring } from "./auth/secrets.js";
import { newToken } from "./auth/tokens.js";
import { ConfigError, type ControlPlaneConfig } from "./config/config.js";
import type { EndpointPolicy } from "./domain/endpoints.js";
import { ForbiddenAddresses } from "./domain/forbidden-addresses.js";
import { DispatchService } from "./gen/fusillade/v1/dispatch_service_pb.js";
import { hostAddresses } from "./http/outbound-guard.js";
import { LeaseService } from "./leases/lease-service.js";
import { startReaper } from "./leases/reaper.js";
import { startRetention } from "./leases/retention-worker.js";
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
  /**
   * A port a dispatcher thread of this process reaches DispatchService through, instead of
   * HTTP/2 (src/api/port-server.ts); its calls must carry the internal dispatcher token.
   * Transfer it to the thread; it closes with the control plane.
   */
  internalDispatcherPort(): MessagePort;
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

/**
 * Starts the reaper (expired claims, ended batches' pending requests) and the
 * retention worker (finished batches, old files, change logs past their
 * time); the result stops both.
 */
function startHousekeeping(
  db: Db,
  config: Readonly<ControlPlaneConfig>,
  log: Logger,
  metrics: ControlPlaneMetrics,
): () => Promise<void> {
  const reaper = startReaper(db, config.reapIntervalMs, log, (c) => metrics.reaped(c));
  const retention = startRetention(db, config, log, (outcome, seconds, counts) =>
    metrics.retentionPass(outcome, seconds, counts ? { ...counts } : undefined),
  );
  return async () => {
    await Promise.all([reaper.stop(), retention.stop()]);
  };
}

/**
 * Shutdown steps, run last-pushed first, once: a second close() gets the first one's
 * promise. A step that fails is logged and the rest still run.
 */
class Cleanup {
  readonly #steps: Array<() => Promise<void>> = [];
  #closing: Promise<void> | undefined;

  constructor(private readonly log: Logger) {}

  push(step: () => Promise<void>): void {
    this.#steps.push(step);
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const fn of this.#steps.toReversed())
        await fn().catch((e) => this.log.error({ err: e }, "shutdown step failed"));
    })();
    return this.#closing;
  }
}

/** Before anything starts: a server open to the network must check tokens. */
function refuseOpenWithoutTokens(config: Readonly<ControlPlaneConfig>): void {
  if (config.adminToken === undefined && !isLoopbackListen(config.host)) {
    throw new ConfigError(
      `refusing to listen on ${config.host} without an admin token: anyone who can reach the port could read every batch and every upstream API key. Set FUSILLADE_ADMIN_TOKEN (or --admin-token-file FILE), or listen on 127.0.0.1 (docs/trust.md)`,
    );
  }
}

/** Migrates the database, opens its two pools and the LISTEN connection. */
async function connect(
  databaseUrl: string,
  config: Readonly<ControlPlaneConfig>,
  log: Logger,
  cleanup: Cleanup,
): Promise<{ db: Db; notifications: Notifications }> {
  const applied = await migrate(databaseUrl);
  if (applied.length > 0) log.info({ migrations: applied }, "migrations applied");
  const timeouts = {
    acquireTimeoutMs: config.dbAcquireTimeoutMs,
    statementTimeoutMs: config.dbStatementTimeoutMs,
  };
  const db = await Db.connect(databaseUrl, {
    general: { size: config.dbPoolSize, name: "fusillade-control-plane", ...timeouts },
    dispatch: { size: config.dbDispatchPoolSize, name: "fusillade-dispatch", ...timeouts },
    onPoolError: (e) => log.warn({ err: e }, "pooled database connection lost"),
  });
  cleanup.push(() => db.close());
  const notifications = new Notifications(databaseUrl, {
    checkIntervalMs: config.listenCheckIntervalMs,
    onError: (e) => log.warn({ err: e }, "LISTEN connection lost"),
  });
  await notifications.start();
  cleanup.push(() => notifications.close());
  return { db, notifications };
}

/** The key that encrypts upstream API keys (made on first start), and keys stored before it sealed. */
async function openKeyring(
  config: Readonly<ControlPlaneConfig>,
  db: Db,
  embedded: boolean,
  log: Logger,
) {
  const { keyring, made } = await loadKeyring({ ...config.secretKey, dataDir: config.dataDir });
  if (made !== undefined) {
    log.info({ file: made }, "made the key that encrypts upstream API keys");
    if (!embedded) {
      log.warn(
        { file: made },
        "every control plane on this database needs this same key: set FUSILLADE_SECRET_KEY (or --secret-key-file) on each",
      );
    }
  }
  const sealed = await reencrypt(db, keyring, true);
  if (sealed > 0) log.info({ keys: sealed }, "encrypted API keys stored before encryption existed");
  return keyring;
}

/** Metrics, the batch lifecycle watcher and the fleet's roll call. */
function startObservers(
  db: Db,
  notifications: Notifications,
  config: Readonly<ControlPlaneConfig>,
  log: Logger,
  cleanup: Cleanup,
) {
  const metrics = new ControlPlaneMetrics(db, config.defaultLimit);
  const lifecycle = new BatchLifecycle(db, log, metrics);
  // Gone after two lease lifetimes without a call (a minute at least: long polls).
  const fleet = new Fleet(log, Math.max(2 * config.leaseTtlMs, 60_000));
  cleanup.push(async () => fleet.close());
  metrics.countDispatchers(() => fleet.size);
  lifecycle.start(notifications);
  cleanup.push(async () => lifecycle.close());
  return { metrics, lifecycle, fleet };
}

/** With tokens, files name public addresses only (its own are loopback, private or on its interfaces), unless listed. */
function endpointPolicy(config: Readonly<ControlPlaneConfig>, localMode: boolean): EndpointPolicy {
  return {
    allow: config.allowedEndpoints,
    denyPrivate: !localMode,
    forbidden: new ForbiddenAddresses(hostAddresses()),
  };
}

/** How a call that failed unexpectedly is logged, on the wire and on the in-process port. */
function callFailed(log: Logger): (e: unknown) => void {
  return (e) => log.error({ err: e }, "request failed");
}

/** The API server on the configured port, and /metrics on its own port when asked. */
async function listen(
  config: Readonly<ControlPlaneConfig>,
  log: Logger,
  parts: {
    auth: Authenticator;
    deps: ApiDeps;
    leases: LeaseService;
    shutdown: AbortSignal;
    metricsSources: MetricsSource[];
  },
  cleanup: Cleanup,
): Promise<{ url: string; metricsUrl: string | undefined }> {
  const { auth, deps } = parts;
  const server = await buildServer({
    auth,
    tls: config.tls,
    routes: routes(deps, parts.leases),
    shutdownSignal: parts.shutdown,
    maxMessageBytes: config.maxMessageBytes,
    logError: callFailed(log),
    connections: config.connections,
    onConnectionClosed: (reason, client) => {
      // Refusals and evictions mean the caps are reached: worth a line each.
      if (reason === "refused" || reason === "evicted") {
        log.warn({ reason, client }, "connection cap reached: a connection was closed");
      } else log.debug({ reason, client }, "connection closed by the server");
    },
    plainRoutes: [
      apiMetricsRoute(parts.metricsSources, auth),
      dashboardRoute(config.webDir),
      openaiRoute(deps, auth),
    ],
  }).listen(config.host, config.port);
  cleanup.push(() => server.close());
  if (config.metricsListen === undefined) return { url: server.url, metricsUrl: undefined };
  const ms = await startMetricsServer(
    config.metricsListen.host,
    config.metricsListen.port,
    parts.metricsSources,
  );
  cleanup.push(() => ms.close());
  log.info({ url: ms.url }, "metrics listening (no token needed there)");
  return { url: server.url, metricsUrl: ms.url };
}

/** Starts a control plane with `config`. */
export async function startControlPlane(
  config: Readonly<ControlPlaneConfig>,
  log: Logger,
): Promise<ControlPlane> {
  refuseOpenWithoutTokens(config);
  const localMode = config.adminToken === undefined;
  const database = await resolveDatabase({
    databaseUrl: config.databaseUrl,
    dataDir: config.dataDir,
    log: (msg) => log.info(msg),
  });
  const cleanup = new Cleanup(log);
  cleanup.push(() => database.stop());
  try {
    const { db, notifications } = await connect(database.url, config, log, cleanup);
    const shutdown = new AbortController();
    // Every long poll and stream listens on it.
    setMaxListeners(0, shutdown.signal);
    const keyring = await openKeyring(config, db, database.embedded, log);
    const { metrics, lifecycle, fleet } = startObservers(db, notifications, config, log, cleanup);
    const metricsSources: MetricsSource[] = [() => metrics.text()];
    const auth = new Authenticator(tokenStore(db, notifications), {
      adminToken: config.adminToken,
      localMode,
    });
    cleanup.push(async () => auth.close());
    const policy = endpointPolicy(config, localMode);
    const deps: ApiDeps = {
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
    // The lease path gets its own pool: client traffic on `db` cannot starve renewals.
    const leases = new LeaseService(db.dispatch, notifications, config, keyring, metrics);
    cleanup.push(startHousekeeping(db, config, log, metrics));
    const parts = { auth, deps, leases, shutdown: shutdown.signal, metricsSources };
    const { url, metricsUrl } = await listen(config, log, parts, cleanup);
    // Runs first on close: long polls and streams end before the server waits for them.
    cleanup.push(async () => shutdown.abort());
    log.info({ url, embeddedDatabase: database.embedded }, "control plane listening");
    log.info(
      localMode
        ? "no admin token configured: local mode, calls without a token are accepted from loopback only (docs/trust.md)"
        : "admin token configured: token mode, every call needs a token (admin, client or dispatcher; docs/trust.md)",
    );
    let internal: string | undefined;
    return {
      url,
      databaseUrl: database.url,
      db,
      metrics,
      metricsUrl,
      addMetricsSource: (source) => metricsSources.push(source),
      close: () => cleanup.close(),
      internalDispatcherToken() {
        if (internal === undefined) {
          internal = newToken();
          auth.addCredential(internal, { role: "dispatcher", tenant: null, source: "serve" });
        }
        return internal;
      },
      internalDispatcherPort() {
        const { port1, port2 } = new MessageChannel();
        const server = servePort(port1, DispatchService, dispatchMethods(deps, leases), {
          interceptors: apiInterceptors(auth, callFailed(log)),
          shutdownSignal: shutdown.signal,
        });
        cleanup.push(() => server.close());
        return port2;
      },
    };
  } catch (e) {
    await cleanup.close();
    throw e;
  }
}
