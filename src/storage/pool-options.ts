/**
 * How every pg pool of a control plane connects: a bounded wait for a free
 * connection, a per-statement timeout, and TCP keepalive, so a saturated pool
 * or a half-open socket turns into an error instead of a wait without end.
 */
import type { PoolConfig } from "pg";

export interface PoolTuning {
  /** Connections in the pool. */
  size: number;
  /** `application_name` of its connections (shows in pg_stat_activity). */
  name: string;
  /** Longest wait for a free connection (or a new one) before the query fails; 0 = no limit. */
  acquireTimeoutMs: number;
  /** Postgres `statement_timeout` of its connections; 0 = none. */
  statementTimeoutMs: number;
}

/**
 * First keepalive probe after this much silence on a socket. The kernel's
 * default (2 h) would leave a connection to a vanished server "open" for
 * hours; renewals must fail over within a lease TTL (30 s).
 */
const KEEPALIVE_IDLE_MS = 10_000;
/** Idle connections are closed after this long (and reopened on demand). */
const IDLE_TIMEOUT_MS = 30_000;

/** pg Pool settings (beyond the URL) for `tuning`. */
export function poolConfig(tuning: PoolTuning): PoolConfig {
  return {
    max: tuning.size,
    application_name: tuning.name,
    connectionTimeoutMillis: tuning.acquireTimeoutMs,
    idleTimeoutMillis: IDLE_TIMEOUT_MS,
    keepAlive: true,
    keepAliveInitialDelayMillis: KEEPALIVE_IDLE_MS,
    // Sent as a startup parameter: applies to every statement on the connection.
    ...(tuning.statementTimeoutMs > 0 ? { statement_timeout: tuning.statementTimeoutMs } : {}),
  };
}
