/**
 * The reaper: expired claims go back to pending (or fail, or end with their
 * batch); pending requests of cancelled or timed-out batches end; expired
 * slot grants are deleted (they already count no more), and rate shares a
 * minute past counting. Every replica runs
 * one; the statements are guarded and skip locked rows, so replicas never
 * fight over a row. A pass starts `intervalMs` after the last one ended, so
 * a slow pass never has others queued behind it.
 */
import { setTimeout as delay } from "node:timers/promises";
import type { Logger } from "../logger.js";
import type { Db } from "../storage/db.js";
import * as sql from "./sql.js";

export interface Reaper {
  /** Runs one pass now (tests, and shutdown-free callers). */
  runOnce(): Promise<{ reaped: number; ended: number }>;
  stop(): Promise<void>;
}

/** What a pass did, for the metrics: claims that expired, requests ended with their batch, grants that expired. */
export type ReapCounts = { reaped: number; ended: number; grantsExpired: number };

/** Starts reaping every `intervalMs`; `onPass` hears what each pass did. */
export function startReaper(
  db: Db,
  intervalMs: number,
  log: Logger,
  onPass: (counts: ReapCounts) => void = () => undefined,
): Reaper {
  const stopping = new AbortController();
  const runOnce = async () => {
    const reaped = await db.query(sql.REQUESTS_REAP_EXPIRED, [null]);
    const ended = await db.query(sql.REQUESTS_END_WITH_BATCH);
    const grants = await db.query(sql.SLOT_GRANTS_DELETE_EXPIRED);
    await db.query(sql.RATE_SHARES_DELETE_SPENT);
    const counts = { reaped: reaped.rowCount ?? 0, ended: ended.rowCount ?? 0 };
    onPass({ ...counts, grantsExpired: grants.rowCount ?? 0 });
    if (counts.reaped + counts.ended > 0) log.debug(counts, "reaper pass");
    return counts;
  };
  const loop = (async () => {
    while (!stopping.signal.aborted) {
      try {
        await delay(intervalMs, undefined, { signal: stopping.signal, ref: false });
      } catch {
        return; // stopped
      }
      await runOnce().catch((e) => log.warn({ err: e }, "reaper pass failed; will retry"));
    }
  })();
  return {
    runOnce,
    async stop() {
      stopping.abort();
      await loop;
    },
  };
}
