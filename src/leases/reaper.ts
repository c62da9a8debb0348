/**
 * The reaper: expired leases go back to pending (or fail, or end with their
 * batch); pending requests of cancelled or timed-out batches end. Every
 * replica runs one; the statements are guarded and skip locked rows, so
 * replicas never fight over a row. Grants also reap their own model first,
 * so a busy model does not wait for this timer.
 */
import type { Logger } from "../logger.js";
import type { Db } from "../storage/db.js";
import * as sql from "./sql.js";

export interface Reaper {
  /** Runs one pass now (tests, and shutdown-free callers). */
  runOnce(): Promise<{ reaped: number; ended: number }>;
  stop(): Promise<void>;
}

/** Starts reaping every `intervalMs`. */
export function startReaper(db: Db, intervalMs: number, log: Logger): Reaper {
  let running: Promise<unknown> = Promise.resolve();
  let stopped = false;
  const runOnce = async () => {
    const reaped = await db.query(sql.REQUESTS_REAP_EXPIRED, [null]);
    const ended = await db.query(sql.REQUESTS_END_WITH_BATCH);
    const counts = { reaped: reaped.rowCount ?? 0, ended: ended.rowCount ?? 0 };
    if (counts.reaped + counts.ended > 0) log.debug(counts, "reaper pass");
    return counts;
  };
  const timer = setInterval(() => {
    if (stopped) return;
    running = running
      .then(runOnce)
      .catch((e) => log.warn({ err: e }, "reaper pass failed; will retry"));
  }, intervalMs);
  timer.unref();
  return {
    runOnce,
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running;
    },
  };
}
