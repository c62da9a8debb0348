/**
 * Configuration: defaults → environment → flags → validated, frozen
 * objects. The only reader of process.env.
 */
import { parseDuration, SECOND } from "../domain/duration.js";

export class ConfigError extends Error {}

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
  /** Longest AcquireLeases long-poll the server holds. @default 30s */
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
});

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
  return Object.freeze(c);
}
