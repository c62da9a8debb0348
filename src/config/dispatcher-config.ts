/**
 * The dispatcher's configuration: defaults → environment → flags → validated,
 * frozen object (flags win over the environment). src/config is the only
 * reader of process.env.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import os from "node:os";
import { MINUTE, SECOND } from "../domain/duration.js";
import { parseAllowList } from "../domain/endpoints.js";
import { ConfigError, parseCount, parseDurationSetting } from "./config.js";

/** Settings of one dispatcher. */
export interface DispatcherConfig {
  /** Base URL of the control plane (http:// is h2c). Required: --control-plane, FUSILLADE_CONTROL_PLANE. */
  controlPlaneUrl: string;
  /**
   * Most requests running at once, across models: the dispatcher never asks
   * for more slots than this. The memory bound: at most capacity × (1 +
   * prefetch) claimed requests are held, each with its request body, and up
   * to `capacity` responses are read at once. @default 10000
   */
  capacity: number;
  /**
   * Claims buffered per model beyond its slots, as a share of the slots (at
   * least one): a finished request's slot starts the next one at once while
   * the report that refills the buffer is on its way. @default 0.5
   */
  prefetch: number;
  /** Serve only these models; empty = every model. @default [] */
  models: readonly string[];
  /** Name in the control plane's lease holder column and in logs. @default "<hostname>-<pid>-<4 hex>" */
  id: string;
  /** How long one WaitForWork long poll may wait for work (the server caps it). @default 20s */
  acquireWaitMs: number;
  /**
   * Period of the renewal loop; undefined derives it from the lease TTL:
   * min(ttl/3, (ttl − margin)/2), so a lease gets two renewal tries before its fence.
   * @default undefined (derived)
   */
  renewIntervalMs: number | undefined;
  /**
   * Self-fencing safety margin: a running request is aborted at
   * (response received + ttl − margin) unless renewed. Undefined derives it:
   * max(2 s, ttl/5), at most ttl/2. See docs/dispatcher.md.
   * @default undefined (derived)
   */
  fenceMarginMs: number | undefined;
  /** Most outcomes in one ReportResults call. @default 256 */
  reportBatchSize: number;
  /** Most body bytes in one ReportResults call (one outcome always goes). @default 16 MiB */
  reportMaxBytes: number;
  /**
   * While a report call is in flight, queued outcomes wait this long (or for a
   * full batch) before a second call is sent. An idle reporter sends at once.
   * @default 5
   */
  reportLingerMs: number;
  /** Deadline of one Sync / ReportResults call. @default 10s */
  rpcTimeoutMs: number;
  /** On stop: time in-flight requests get to finish before they are aborted and released. @default 30s */
  shutdownGraceMs: number;
  /** On stop, after the grace: time to get the last reports through. @default 10s */
  shutdownFlushMs: number;
  /** Upstream TCP/TLS connect timeout. @default 10s */
  connectTimeoutMs: number;
  /** Upstream time to response headers (LLM calls can take minutes). @default 10m */
  firstByteTimeoutMs: number;
  /** Upstream time for a whole attempt, body included. @default 15m */
  totalTimeoutMs: number;
  /** Largest 2xx response body accepted. @default 32 MiB */
  maxResponseBytes: number;
  /** pino level. @default "info" */
  logLevel: string;
  /** Bearer token for the control plane (a dispatcher or admin token); undefined: none (local mode). */
  token: string | undefined;
  /** PEM CA certificates trusted for an https:// control plane (besides the system's). */
  ca: string | undefined;
  /**
   * The outbound policy of a server with tokens (docs/trust.md): refuse, after
   * DNS, every upstream address that is not public unicast (loopback,
   * private, link-local, metadata, this host's own…) unless its host is
   * listed. No flag of its own: a dispatcher with a token (its control plane
   * requires one) refuses, one without (local mode) does not; `serve`
   * follows its control plane's admin token.
   * @default true when a token is set
   */
  denyPrivateNetworks: boolean;
  /** Host patterns (--allowed-endpoints, FUSILLADE_ALLOWED_ENDPOINTS) exempt from denyPrivateNetworks. */
  allowedHosts: readonly string[];
}

const MIB = 1024 * 1024;

/** Defaults of every field but controlPlaneUrl and id. */
export const DISPATCHER_DEFAULTS = Object.freeze({
  capacity: 10_000,
  prefetch: 0.5,
  models: Object.freeze([]) as readonly string[],
  acquireWaitMs: 20 * SECOND,
  renewIntervalMs: undefined,
  fenceMarginMs: undefined,
  reportBatchSize: 256,
  reportMaxBytes: 16 * MIB,
  reportLingerMs: 5,
  rpcTimeoutMs: 10 * SECOND,
  shutdownGraceMs: 30 * SECOND,
  shutdownFlushMs: 10 * SECOND,
  connectTimeoutMs: 10 * SECOND,
  firstByteTimeoutMs: 10 * MINUTE,
  totalTimeoutMs: 15 * MINUTE,
  maxResponseBytes: 32 * MIB,
  logLevel: "info",
  token: undefined,
  ca: undefined,
  denyPrivateNetworks: false,
  allowedHosts: Object.freeze([]) as readonly string[],
} satisfies Omit<DispatcherConfig, "controlPlaneUrl" | "id">);

const LEVELS = new Set(["fatal", "error", "warn", "info", "debug", "trace", "silent"]);

/** A default dispatcher id: host, pid and a little randomness (pids repeat across hosts and restarts). */
export function defaultDispatcherId(): string {
  return `${os.hostname()}-${process.pid}-${randomBytes(2).toString("hex")}`;
}

/** Throws unless `value` is an http(s) URL; the message names `name`. */
function checkUrl(value: string, name: string): void {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(
      `${name} must be a URL such as http://127.0.0.1:8080, got ${JSON.stringify(value)}`,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new ConfigError(
      `${name} must start with http:// or https://, got ${JSON.stringify(value)}`,
    );
  }
}

/** options → defaults → validate → frozen config. Throws ConfigError naming the field. */
export function resolveDispatcherConfig(
  options: Partial<DispatcherConfig> & Pick<DispatcherConfig, "controlPlaneUrl">,
): Readonly<DispatcherConfig> {
  const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
  const c: DispatcherConfig = {
    ...DISPATCHER_DEFAULTS,
    id: defaultDispatcherId(),
    ...defined,
  } as DispatcherConfig;
  checkUrl(c.controlPlaneUrl, "controlPlaneUrl");
  const positive = [
    "capacity",
    "acquireWaitMs",
    "reportBatchSize",
    "reportMaxBytes",
    "rpcTimeoutMs",
    "connectTimeoutMs",
    "firstByteTimeoutMs",
    "totalTimeoutMs",
    "maxResponseBytes",
  ] as const;
  for (const key of positive) {
    if (!Number.isSafeInteger(c[key]) || c[key] <= 0) {
      throw new ConfigError(`${key} must be a positive integer, got ${c[key]}`);
    }
  }
  for (const key of ["reportLingerMs", "shutdownGraceMs", "shutdownFlushMs"] as const) {
    if (!Number.isSafeInteger(c[key]) || c[key] < 0) {
      throw new ConfigError(`${key} must be a non-negative integer, got ${c[key]}`);
    }
  }
  if (
    c.renewIntervalMs !== undefined &&
    (!Number.isSafeInteger(c.renewIntervalMs) || c.renewIntervalMs <= 0)
  ) {
    throw new ConfigError(`renewIntervalMs must be a positive integer, got ${c.renewIntervalMs}`);
  }
  if (
    c.fenceMarginMs !== undefined &&
    (!Number.isSafeInteger(c.fenceMarginMs) || c.fenceMarginMs < 0)
  ) {
    throw new ConfigError(`fenceMarginMs must be a non-negative integer, got ${c.fenceMarginMs}`);
  }
  if (!Number.isFinite(c.prefetch) || c.prefetch < 0 || c.prefetch > 10) {
    throw new ConfigError(`prefetch must be a number from 0 to 10, got ${c.prefetch}`);
  }
  if (c.id.trim() === "") throw new ConfigError("id must not be empty");
  if (!LEVELS.has(c.logLevel)) {
    throw new ConfigError(
      `logLevel must be one of ${[...LEVELS].join(", ")}, got ${JSON.stringify(c.logLevel)}`,
    );
  }
  c.models = Object.freeze([...new Set(c.models.map((m) => m.trim()).filter((m) => m !== ""))]);
  return Object.freeze(c);
}

/** Flags of `fusillade dispatcher` (and `serve`'s dispatcher ones); undefined = not given. */
export interface DispatcherFlags {
  controlPlane?: string;
  capacity?: string;
  prefetch?: string;
  models?: string;
  id?: string;
  acquireWait?: string;
  renewInterval?: string;
  fenceMargin?: string;
  shutdownGrace?: string;
  connectTimeout?: string;
  firstByteTimeout?: string;
  totalTimeout?: string;
  maxResponseBytes?: string;
  logLevel?: string;
  token?: string;
  ca?: string;
  allowedEndpoints?: string;
}

/** The flags' environment variables: flag → variable. */
const ENV: Record<keyof DispatcherFlags, string> = {
  controlPlane: "FUSILLADE_CONTROL_PLANE",
  capacity: "FUSILLADE_CAPACITY",
  prefetch: "FUSILLADE_PREFETCH",
  models: "FUSILLADE_MODELS",
  id: "FUSILLADE_DISPATCHER_ID",
  acquireWait: "FUSILLADE_ACQUIRE_WAIT",
  renewInterval: "FUSILLADE_RENEW_INTERVAL",
  fenceMargin: "FUSILLADE_FENCE_MARGIN",
  shutdownGrace: "FUSILLADE_SHUTDOWN_GRACE",
  connectTimeout: "FUSILLADE_CONNECT_TIMEOUT",
  firstByteTimeout: "FUSILLADE_FIRST_BYTE_TIMEOUT",
  totalTimeout: "FUSILLADE_TOTAL_TIMEOUT",
  maxResponseBytes: "FUSILLADE_MAX_RESPONSE_BYTES",
  logLevel: "FUSILLADE_LOG_LEVEL",
  token: "FUSILLADE_TOKEN",
  ca: "FUSILLADE_CA",
  allowedEndpoints: "FUSILLADE_ALLOWED_ENDPOINTS",
};

const kebab = (s: string) => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** The hosts of an allow-list setting (its schemes and ports do not matter after DNS). */
function allowedHosts(setting: [string, string] | undefined): string[] {
  if (setting === undefined) return [];
  try {
    return parseAllowList(setting[0], setting[1]).map((p) => p.host.replace(/^\[|\]$/g, ""));
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
}

/** The PEM file named by --ca / FUSILLADE_CA. */
function readCa(setting: [string, string] | undefined): string | undefined {
  if (setting === undefined) return undefined;
  try {
    return readFileSync(setting[0], "utf8");
  } catch (e) {
    throw new ConfigError(`${setting[1]}: cannot read ${setting[0]} (${(e as Error).message})`);
  }
}

/** Builds the dispatcher's config from defaults, `env` and `flags` (flags win). */
export function dispatcherConfig(
  flags: DispatcherFlags,
  env: NodeJS.ProcessEnv = process.env,
): Readonly<DispatcherConfig> {
  /** The raw setting and the name to blame for it. */
  const get = (key: keyof DispatcherFlags): [string, string] | undefined => {
    if (flags[key] !== undefined) return [flags[key], `--${kebab(key)}`];
    const v = env[ENV[key]];
    return v === undefined || v === "" ? undefined : [v, ENV[key]];
  };
  const count = (key: keyof DispatcherFlags) => {
    const s = get(key);
    return s && parseCount(s[0], s[1]);
  };
  const duration = (key: keyof DispatcherFlags, allowZero = false) => {
    const s = get(key);
    if (!s) return undefined;
    const ms = parseDurationSetting(s[0], s[1]);
    if (!allowZero && ms <= 0)
      throw new ConfigError(`${s[1]} must be more than 0, got ${JSON.stringify(s[0])}`);
    return ms;
  };
  const fraction = (key: keyof DispatcherFlags) => {
    const s = get(key);
    if (!s) return undefined;
    const n = Number(s[0]);
    if (s[0].trim() === "" || !Number.isFinite(n) || n < 0 || n > 10) {
      throw new ConfigError(`${s[1]} must be a number from 0 to 10, got ${JSON.stringify(s[0])}`);
    }
    return n;
  };
  const level = get("logLevel");
  if (level && !LEVELS.has(level[0])) {
    throw new ConfigError(
      `${level[1]} must be one of ${[...LEVELS].join(", ")}, got ${JSON.stringify(level[0])}`,
    );
  }
  const url = get("controlPlane");
  if (!url) {
    throw new ConfigError(
      `the control plane's URL is required: --control-plane URL or ${ENV.controlPlane}`,
    );
  }
  checkUrl(url[0], url[1]);
  const token = get("token")?.[0].trim();
  return resolveDispatcherConfig({
    controlPlaneUrl: url[0],
    capacity: count("capacity"),
    prefetch: fraction("prefetch"),
    models: get("models")?.[0].split(","),
    id: get("id")?.[0],
    acquireWaitMs: duration("acquireWait"),
    renewIntervalMs: duration("renewInterval"),
    fenceMarginMs: duration("fenceMargin", true),
    shutdownGraceMs: duration("shutdownGrace", true),
    connectTimeoutMs: duration("connectTimeout"),
    firstByteTimeoutMs: duration("firstByteTimeout"),
    totalTimeoutMs: duration("totalTimeout"),
    maxResponseBytes: count("maxResponseBytes"),
    logLevel: level?.[0],
    token,
    ca: readCa(get("ca")),
    // With credentials, the fleet is shared: only public addresses, unless listed.
    denyPrivateNetworks: token !== undefined,
    allowedHosts: allowedHosts(get("allowedEndpoints")),
  });
}
