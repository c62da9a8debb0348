/**
 * The retention worker: runs a retention pass (src/storage/retention.ts)
 * every `intervalMs` on every replica; the pass's advisory lock lets one at
 * a time do the work and the others skip. A pass starts `intervalMs` after
 * the last one ended. Stopping ends a pass between two chunks; what it had
 * marked is finished by the next pass, here or on another replica.
 */
import { setTimeout as delay } from "node:timers/promises";
import { MINUTE, SECOND } from "../domain/duration.js";
import type { Logger } from "../logger.js";
import type { Db } from "../storage/db.js";
import {
  type RetentionCounts,
  type RetentionSettings,
  retentionPass,
} from "../storage/retention.js";

/** What the worker reports of each pass (counts undefined: skipped or failed). */
export type RetentionPassListener = (
  outcome: "done" | "skipped" | "failed",
  seconds: number,
  counts?: RetentionCounts,
) => void;

export interface RetentionWorker {
  /** Runs one pass now; undefined when another replica's pass holds the lock. */
  runOnce(): Promise<RetentionCounts | undefined>;
  stop(): Promise<void>;
}

/**
 * How often to look: a tenth of the shorter setting, between 1 s and a
 * minute (a "10s" retention is tried in seconds; a batch's own, shorter
 * retention waits at most a minute past its time).
 */
export function retentionIntervalMs(s: Readonly<RetentionSettings>): number {
  const set = [s.retentionMs, s.eventRetentionMs].filter((ms) => ms > 0);
  return Math.min(MINUTE, Math.max(SECOND, Math.min(...set) / 10));
}

/** Starts the worker; `onPass` hears what each pass did. */
export function startRetention(
  db: Db,
  settings: Readonly<RetentionSettings>,
  log: Logger,
  onPass: RetentionPassListener = () => undefined,
  intervalMs = retentionIntervalMs(settings),
): RetentionWorker {
  const stopping = new AbortController();
  const runOnce = async () => {
    const started = performance.now();
    const seconds = () => (performance.now() - started) / 1000;
    const counts = await retentionPass(db, settings, { signal: stopping.signal });
    onPass(counts ? "done" : "skipped", seconds(), counts);
    if (counts && Object.values(counts).some((n) => n > 0)) {
      log.info({ ...counts, seconds: Number(seconds().toFixed(3)) }, "retention pass deleted rows");
    }
    return counts;
  };
  const loop = (async () => {
    while (!stopping.signal.aborted) {
      try {
        await delay(intervalMs, undefined, { signal: stopping.signal, ref: false });
      } catch {
        return; // stopped
      }
      await runOnce().catch((e) => {
        if (stopping.signal.aborted) return;
        onPass("failed", 0);
        log.warn({ err: e }, "retention pass failed; will retry");
      });
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
