/**
 * Configuration: defaults → environment → flags → validated, frozen
 * objects. The only reader of process.env.
 *
 * src/config/ owns configuration and is the only reader of process.env. It
 * may import src/domain only.
 */
import { readFileSync } from "node:fs";
import { DAY, HOUR, parseDuration, SECOND } from "../domain/duration.js";
import { type OriginPattern, parseAllowList } from "../domain/endpoints.js";

export class ConfigError extends Error {}

/**
 * The API port's connection caps and timeouts (docs/trust.md, "Timeouts and connection
 * caps"); every duration in ms.
 */
export interface ConnectionLimits {
  /** Most connections open at once (FUSILLADE_MAX_CONNECTIONS). @default 10,000 */
  maxConnections: number;
  /** Most connections from one client address (FUSILLADE_MAX_CONNECTIONS_PER_CLIENT). @default 1,000 */
  maxConnectionsPerClient: number;
  /** From accept to a request's headers (FUSILLADE_HEADERS_TIMEOUT). @default 20s */
  headersTimeoutMs: number;
  /** A connection with no request in progress is closed (FUSILLADE_IDLE_TIMEOUT; 0 = never). @default 5m */
  idleTimeoutMs: number;
  /** A request body that stalls this long is cut (FUSILLADE_BODY_TIMEOUT; 0 = never). @default 30s */
  bodyTimeoutMs: number;
}

/**
 * A mesh operator's defaults: room for far more clients than a fleet has (a sidecar, or
 * many dispatchers, comes from few addresses), headers within 20 s (slow clients on a bad
 * link still make it; a socket that says nothing does not stay), keep-alive longer than
 * the usual proxy pool's idle time, and 30 s for a body to move at all.
 */
export const CONNECTION_DEFAULTS: Readonly<ConnectionLimits> = Object.freeze({
  maxConnections: 10_000,
  maxConnectionsPerClient: 1_000,
  headersTimeoutMs: 20 * SECOND,
  idleTimeoutMs: 300 * SECOND,
  bodyTimeoutMs: 30 * SECOND,
});

/** Settings of the control plane. */
export interface ControlPlaneConfig {
  /** Host to listen on. @default "127.0.0.1" */
  host: string;
  /** Port to listen on; 0 picks a free one. @default 8080 */
  port: number;
  /** Postgres URL; when undefined an embedded Postgres keeps its data in dataDir. */
  databaseUrl: string | undefined;
  /** Folder for the embedded Postgres' data. @default "./.fusillade" */
  dataDir: string;
  /** Concurrency limit of a model that has none set. @default 10 */
  defaultLimit: number;
  /** Lease lifetime, renewed by dispatchers while a request runs. @default 30s */
  leaseTtlMs: number;
  /** Longest WaitForWork long poll the server holds. @default 30s */
  maxAcquireWaitMs: number;
  /** How often the reaper looks for expired leases and batches. @default 1s */
  reapIntervalMs: number;
  /** Completion window of a batch created without one. @default "24h" */
  defaultCompletionWindow: string;
  /** Retry policy of a batch created without one. */
  defaultMaxRetries: number;
  defaultInitialBackoffMs: number;
  defaultMaxBackoffMs: number;
  /** Largest request message accepted (CreateFile with inline content). @default 64 MiB */
  maxMessageBytes: number;
  /** pino level. @default "info" */
  logLevel: string;
  /** Connections of the general pool (API handlers, streams, reaper). @default 20 */
  dbPoolSize: number;
  /** Connections of the lease path's own pool (grants, renewals, reports). @default 10 */
  dbDispatchPoolSize: number;
  /** Longest wait for a pooled connection; then the call fails with UNAVAILABLE. @default 10s */
  dbAcquireTimeoutMs: number;
  /**
   * Postgres statement_timeout of pooled connections (not migrations); 0 = none.
   * The longest statements measured: CancelBatch of 50,000 requests ~2.3 s,
   * CreateBatch of 50,000 ~1 s (bench/RESULTS.md). @default 60s
   */
  dbStatementTimeoutMs: number;
  /** How often the LISTEN connection is checked with `SELECT 1` (and re-established). @default 5s */
  listenCheckIntervalMs: number;
  /**
   * How often an open stream (WatchBatch, StreamBatchRequests,
   * GetBatchResults) checks its credential again, besides at once on a
   * revocation's NOTIFY: a revoked token's streams end within this (plus
   * the authenticator's 10 s cache) even when that notification is missed.
   * @default 5s
   */
  streamReauthIntervalMs: number;
  /**
   * A server stream (WatchBatch, StreamBatchRequests) that has sent nothing for this long
   * sends a heartbeat (the batch again; a HEARTBEAT message), so proxies and meshes that
   * close idle streams (Envoy's stream idle timeout, a load balancer's 60 s) keep a quiet
   * batch's watchers. FUSILLADE_STREAM_HEARTBEAT; 0: never. @default 30s
   */
  streamHeartbeatMs: number;
  /** Largest UploadFile content, in bytes. @default 256 MiB */
  maxUploadBytes: number;
  /** Most lines (templates) in one UploadFile. @default 100,000 */
  maxUploadLines: number;
  /** Most bytes of request and response bodies in one page of ListBatchRequests / StreamBatchRequests / GetBatchResults (a page holds at least one row). @default 3 MiB */
  maxPageBytes: number;
  /**
   * Most request-body bytes of the claims in one Sync or ReportResults answer,
   * shared among the models asked for (each model gets at least one claim). @default 8 MiB
   */
  maxClaimBytes: number;
  /**
   * How a model's claims are split among batches (docs/fair-share.md):
   * "fair" (priority classes, then tenants by weight, then batches) or
   * "fifo" (oldest batch first, as before fair share). FUSILLADE_FAIR_SHARE=on|off.
   * @default "fair"
   */
  sharePolicy: "fair" | "fifo";
  /**
   * The bootstrap admin token (docs/trust.md). Unset: local mode, where calls
   * without a token are accepted from loopback only, and listening anywhere
   * else is refused.
   */
  adminToken: string | undefined;
  /** PEM certificate chain and private key: the port speaks TLS (h2 and HTTP/1.1). */
  tls: { cert: string; key: string } | undefined;
  /** Origins files may name (docs/trust.md); undefined: any but the denied ones. */
  allowedEndpoints: OriginPattern[] | undefined;
  /**
   * A separate address for /metrics, open without a token (docs/observability.md).
   * @default undefined: /metrics on the API port, with an admin's credential
   */
  metricsListen?: { host: string; port: number } | undefined;
  /**
   * The built dashboard's folder (FUSILLADE_WEB_DIR; tests and development).
   * @default dist/web of this package
   */
  webDir?: string | undefined;
  /**
   * Where the key that encrypts upstream API keys comes from (docs/trust.md):
   * FUSILLADE_SECRET_KEY, or --secret-key-file / FUSILLADE_SECRET_KEY_FILE;
   * neither: `secret.key` in the data directory, made on first start. Older
   * keys (decrypt only): FUSILLADE_PREVIOUS_SECRET_KEYS.
   */
  secretKey: { key?: string; keyFile?: string; previous?: string };
  /** Connection caps and timeouts of the API port. */
  connections: Readonly<ConnectionLimits>;
  /**
   * How long a finished batch (with its requests and results) is kept, unless
   * it was created with its own retention, and how long a file no batch came
   * from is kept after its upload; 0 = until deleted (--retention,
   * FUSILLADE_RETENTION; docs/operations.md). @default 30d
   */
  retentionMs: number;
  /**
   * How long a finished batch's change log (request_events) is kept: a
   * stream resuming later gets the final state again instead of the changes,
   * and a request's attempts are no longer listed; 0 = until the batch goes
   * (FUSILLADE_EVENT_RETENTION; docs/streaming.md). @default 1h
   */
  eventRetentionMs: number;
}

export const CONTROL_PLANE_DEFAULTS: Readonly<ControlPlaneConfig> = Object.freeze({
  host: "127.0.0.1",
  port: 8080,
  databaseUrl: undefined,
  dataDir: "./.fusillade",
  defaultLimit: 10,
  leaseTtlMs: 30 * SECOND,
  maxAcquireWaitMs: 30 * SECOND,
  reapIntervalMs: 1 * SECOND,
  defaultCompletionWindow: "24h",
  defaultMaxRetries: 5,
  defaultInitialBackoffMs: 1 * SECOND,
  defaultMaxBackoffMs: 60 * SECOND,
  maxMessageBytes: 64 * 1024 * 1024,
  logLevel: "info",
  dbPoolSize: 20,
  dbDispatchPoolSize: 10,
  dbAcquireTimeoutMs: 10 * SECOND,
  dbStatementTimeoutMs: 60 * SECOND,
  listenCheckIntervalMs: 5 * SECOND,
  streamReauthIntervalMs: 5 * SECOND,
  streamHeartbeatMs: 30 * SECOND,
  maxUploadBytes: 256 * 1024 * 1024,
  maxUploadLines: 100_000,
  maxPageBytes: 3 * 1024 * 1024,
  maxClaimBytes: 8 * 1024 * 1024,
  sharePolicy: "fair",
  adminToken: undefined,
  tls: undefined,
  allowedEndpoints: undefined,
  secretKey: {},
  connections: CONNECTION_DEFAULTS,
  retentionMs: 30 * DAY,
  eventRetentionMs: HOUR,
});

/** Shortest admin token accepted: anything shorter is guessable. */
export const MIN_ADMIN_TOKEN_LENGTH = 16;

/** Settings read from the environment only: variable → key, and whether 0 is allowed. */
const ENV_COUNTS: ReadonlyArray<readonly [string, keyof ControlPlaneConfig, boolean]> = [
  ["FUSILLADE_DB_POOL_SIZE", "dbPoolSize", false],
  ["FUSILLADE_DB_DISPATCH_POOL_SIZE", "dbDispatchPoolSize", false],
  ["FUSILLADE_MAX_UPLOAD_BYTES", "maxUploadBytes", false],
  ["FUSILLADE_MAX_UPLOAD_LINES", "maxUploadLines", false],
  ["FUSILLADE_MAX_PAGE_BYTES", "maxPageBytes", false],
  ["FUSILLADE_MAX_CLAIM_BYTES", "maxClaimBytes", false],
];
/** Durations read from the environment only; "0" means none where allowed. */
const ENV_DURATIONS: ReadonlyArray<readonly [string, keyof ControlPlaneConfig, boolean]> = [
  ["FUSILLADE_DB_ACQUIRE_TIMEOUT", "dbAcquireTimeoutMs", true],
  ["FUSILLADE_DB_STATEMENT_TIMEOUT", "dbStatementTimeoutMs", true],
  ["FUSILLADE_LISTEN_CHECK_INTERVAL", "listenCheckIntervalMs", false],
  ["FUSILLADE_STREAM_REAUTH_INTERVAL", "streamReauthIntervalMs", false],
  ["FUSILLADE_STREAM_HEARTBEAT", "streamHeartbeatMs", true],
  ["FUSILLADE_EVENT_RETENTION", "eventRetentionMs", true],
];
/** The connection settings, from the environment only: variable → key, and whether 0 is allowed. */
const ENV_CONNECTION_COUNTS: ReadonlyArray<readonly [string, keyof ConnectionLimits]> = [
  ["FUSILLADE_MAX_CONNECTIONS", "maxConnections"],
  ["FUSILLADE_MAX_CONNECTIONS_PER_CLIENT", "maxConnectionsPerClient"],
];
const ENV_CONNECTION_DURATIONS: ReadonlyArray<readonly [string, keyof ConnectionLimits, boolean]> =
  [
    ["FUSILLADE_HEADERS_TIMEOUT", "headersTimeoutMs", false],
    ["FUSILLADE_IDLE_TIMEOUT", "idleTimeoutMs", true],
    ["FUSILLADE_BODY_TIMEOUT", "bodyTimeoutMs", true],
  ];

/** Parses "HOST:PORT" (IPv6 in brackets). */
export function parseListen(value: string, name: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(value.trim());
  if (!m) throw new ConfigError(`${name} must look like HOST:PORT, got ${JSON.stringify(value)}`);
  const port = Number(m[3]);
  if (port > 65535) throw new ConfigError(`${name}: port ${port} is out of range`);
  return { host: m[1] ?? (m[2] || "127.0.0.1"), port };
}

/** Parses a positive (or zero, with allowZero) integer setting. */
export function parseCount(value: string, name: string, allowZero = false): number {
  // Digits only: Number() alone takes "" and " " as 0, "0x10" as 16 and "1e3" as 1000.
  const n = /^\s*\d+\s*$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < (allowZero ? 0 : 1)) {
    throw new ConfigError(
      `${name} must be a ${allowZero ? "non-negative" : "positive"} integer, got ${JSON.stringify(value)}`,
    );
  }
  return n;
}

/** Parses a duration setting ("30s", "500ms", "2m"). */
export function parseDurationSetting(value: string, name: string): number {
  const ms = parseDuration(value);
  if (ms === undefined)
    throw new ConfigError(
      `${name} must be a duration such as 30s or 500ms, got ${JSON.stringify(value)}`,
    );
  return ms;
}

/** pino's levels. */
export const LOG_LEVELS: ReadonlySet<string> = new Set([
  "fatal",
  "error",
  "warn",
  "info",
  "debug",
  "trace",
  "silent",
]);

/** Flags of the control plane commands; undefined means "not given". */
export interface ControlPlaneFlags {
  listen?: string;
  dataDir?: string;
  databaseUrl?: string;
  defaultLimit?: string;
  leaseTtl?: string;
  logLevel?: string;
  adminTokenFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  allowedEndpoints?: string;
  metricsListen?: string;
  secretKeyFile?: string;
  retention?: string;
}

/** --metrics-listen HOST:PORT (env FUSILLADE_METRICS_LISTEN), for either kind of process. */
export function metricsListenOf(
  flags: { metricsListen?: string },
  env: NodeJS.ProcessEnv = process.env,
): { host: string; port: number } | undefined {
  const v = flags.metricsListen ?? env.FUSILLADE_METRICS_LISTEN;
  if (v === undefined || (v === "" && flags.metricsListen === undefined)) return undefined;
  return parseListen(
    v,
    flags.metricsListen !== undefined ? "--metrics-listen" : "FUSILLADE_METRICS_LISTEN",
  );
}

/** The admin token from --admin-token-file, FUSILLADE_ADMIN_TOKEN_FILE or FUSILLADE_ADMIN_TOKEN. */
function adminToken(flags: ControlPlaneFlags, env: NodeJS.ProcessEnv): string | undefined {
  const file = flags.adminTokenFile ?? env.FUSILLADE_ADMIN_TOKEN_FILE;
  let token: string | undefined;
  let name: string;
  if (file !== undefined && file !== "") {
    name = flags.adminTokenFile !== undefined ? "--admin-token-file" : "FUSILLADE_ADMIN_TOKEN_FILE";
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      throw new ConfigError(`${name}: cannot read ${file} (${(e as Error).message})`);
    }
    token = text.split(/\r?\n/)[0]!.trim();
  } else {
    name = "FUSILLADE_ADMIN_TOKEN";
    token = env.FUSILLADE_ADMIN_TOKEN === "" ? undefined : env.FUSILLADE_ADMIN_TOKEN?.trim();
  }
  if (token === undefined) return undefined;
  if (token.length < MIN_ADMIN_TOKEN_LENGTH || /\s/.test(token)) {
    throw new ConfigError(
      `${name}: the admin token must be at least ${MIN_ADMIN_TOKEN_LENGTH} characters without spaces (e.g. \`openssl rand -hex 32\`)`,
    );
  }
  return token;
}

/** The certificate and key named by --tls-cert/--tls-key (FUSILLADE_TLS_CERT/_KEY): both or neither. */
function tlsFiles(
  flags: ControlPlaneFlags,
  env: NodeJS.ProcessEnv,
): { cert: string; key: string } | undefined {
  const pick = (flag: string | undefined, variable: string, flagName: string) => {
    if (flag !== undefined) return { path: flag, name: flagName };
    const v = env[variable];
    return v === undefined || v === "" ? undefined : { path: v, name: variable };
  };
  const cert = pick(flags.tlsCert, "FUSILLADE_TLS_CERT", "--tls-cert");
  const key = pick(flags.tlsKey, "FUSILLADE_TLS_KEY", "--tls-key");
  if (cert === undefined && key === undefined) return undefined;
  if (cert === undefined || key === undefined) {
    const given = (cert ?? key)!.name;
    throw new ConfigError(
      `${given} needs its pair: TLS takes a certificate and a key (--tls-cert FILE --tls-key FILE, or FUSILLADE_TLS_CERT and FUSILLADE_TLS_KEY)`,
    );
  }
  const read = (f: { path: string; name: string }) => {
    try {
      return readFileSync(f.path, "utf8");
    } catch (e) {
      throw new ConfigError(`${f.name}: cannot read ${f.path} (${(e as Error).message})`);
    }
  };
  return { cert: read(cert), key: read(key) };
}

/** A duration variable's value in ms ("0" = none, where allowed); undefined when unset or empty. */
function envDuration(env: NodeJS.ProcessEnv, name: string, allowZero: boolean): number | undefined {
  const v = env[name];
  if (v === undefined || v === "") return undefined;
  const ms = v.trim() === "0" ? 0 : parseDurationSetting(v, name);
  if (ms === 0 && !allowZero) throw new ConfigError(`${name} must be above 0, got "0"`);
  return ms;
}

/** Builds the control plane's config from defaults, `env` and `flags` (flags win). */
export function controlPlaneConfig(
  flags: ControlPlaneFlags,
  env: NodeJS.ProcessEnv = process.env,
): Readonly<ControlPlaneConfig> {
  const c: ControlPlaneConfig = { ...CONTROL_PLANE_DEFAULTS };
  // Errors name the flag when it was given (even as ""), else the variable.
  const listen = flags.listen ?? env.FUSILLADE_LISTEN;
  if (listen !== undefined) {
    const { host, port } = parseListen(
      listen,
      flags.listen !== undefined ? "--listen" : "FUSILLADE_LISTEN",
    );
    c.host = host;
    c.port = port;
  }
  c.metricsListen = metricsListenOf(flags, env);
  c.webDir = env.FUSILLADE_WEB_DIR || undefined;
  c.dataDir = flags.dataDir ?? env.FUSILLADE_DATA_DIR ?? c.dataDir;
  const url = flags.databaseUrl ?? env.DATABASE_URL;
  c.databaseUrl = url === "" ? undefined : url;
  const limit = flags.defaultLimit ?? env.FUSILLADE_DEFAULT_LIMIT;
  if (limit !== undefined) {
    c.defaultLimit = parseCount(
      limit,
      flags.defaultLimit !== undefined ? "--default-limit" : "FUSILLADE_DEFAULT_LIMIT",
    );
  }
  const ttl = flags.leaseTtl ?? env.FUSILLADE_LEASE_TTL;
  if (ttl !== undefined) {
    const name = flags.leaseTtl !== undefined ? "--lease-ttl" : "FUSILLADE_LEASE_TTL";
    c.leaseTtlMs = parseDurationSetting(ttl, name);
    if (c.leaseTtlMs < SECOND) {
      throw new ConfigError(`${name} must be at least 1s, got ${JSON.stringify(ttl)}`);
    }
  }
  const retention = flags.retention ?? env.FUSILLADE_RETENTION;
  if (retention !== undefined && retention !== "") {
    const name = flags.retention !== undefined ? "--retention" : "FUSILLADE_RETENTION";
    c.retentionMs = retention.trim() === "0" ? 0 : parseDurationSetting(retention, name);
  }
  const level = flags.logLevel ?? env.FUSILLADE_LOG_LEVEL;
  if (level !== undefined) {
    if (!LOG_LEVELS.has(level)) {
      const name = flags.logLevel !== undefined ? "--log-level" : "FUSILLADE_LOG_LEVEL";
      throw new ConfigError(
        `${name} must be one of ${[...LOG_LEVELS].join(", ")}, got ${JSON.stringify(level)}`,
      );
    }
    c.logLevel = level;
  }
  const fair = env.FUSILLADE_FAIR_SHARE;
  if (fair !== undefined && fair !== "") {
    if (fair !== "on" && fair !== "off") {
      throw new ConfigError(`FUSILLADE_FAIR_SHARE must be on or off, got ${JSON.stringify(fair)}`);
    }
    c.sharePolicy = fair === "on" ? "fair" : "fifo";
  }
  c.adminToken = adminToken(flags, env);
  c.tls = tlsFiles(flags, env);
  c.secretKey = {
    key: env.FUSILLADE_SECRET_KEY || undefined,
    keyFile: flags.secretKeyFile ?? (env.FUSILLADE_SECRET_KEY_FILE || undefined),
    previous: env.FUSILLADE_PREVIOUS_SECRET_KEYS || undefined,
  };
  const allowed = flags.allowedEndpoints ?? env.FUSILLADE_ALLOWED_ENDPOINTS;
  if (allowed !== undefined && allowed.trim() !== "") {
    const name =
      flags.allowedEndpoints !== undefined ? "--allowed-endpoints" : "FUSILLADE_ALLOWED_ENDPOINTS";
    try {
      c.allowedEndpoints = parseAllowList(allowed, name);
    } catch (e) {
      throw new ConfigError((e as Error).message);
    }
  }
  const settings = c as unknown as Record<string, number>;
  for (const [name, key, allowZero] of ENV_COUNTS) {
    const v = env[name];
    if (v !== undefined && v !== "") settings[key] = parseCount(v, name, allowZero);
  }
  for (const [name, key, allowZero] of ENV_DURATIONS) {
    const ms = envDuration(env, name, allowZero);
    if (ms !== undefined) settings[key] = ms;
  }
  const connections: ConnectionLimits = { ...CONNECTION_DEFAULTS };
  for (const [name, key] of ENV_CONNECTION_COUNTS) {
    const v = env[name];
    if (v !== undefined && v !== "") connections[key] = parseCount(v, name);
  }
  for (const [name, key, allowZero] of ENV_CONNECTION_DURATIONS) {
    const ms = envDuration(env, name, allowZero);
    if (ms !== undefined) connections[key] = ms;
  }
  c.connections = Object.freeze(connections);
  return Object.freeze(c);
}
