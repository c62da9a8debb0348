/** How often the retention worker looks: a tenth of the shorter setting, between 1 s and a minute. */
import { describe, expect, it } from "vitest";
import { retentionIntervalMs } from "../../src/leases/retention-worker.js";

describe("retentionIntervalMs", () => {
  it.each([
    // The defaults (30 days, an hour): once a minute.
    [30 * 86_400_000, 3_600_000, 60_000],
    // A 10 s retention is tried every second; never more often.
    [10_000, 3_600_000, 1_000],
    [2_000, 0, 1_000],
    // The shorter setting decides; 0 (kept) is no setting.
    [86_400_000, 300_000, 30_000],
    [0, 0, 60_000],
  ])("retention %d ms, events %d ms: every %d ms", (retentionMs, eventRetentionMs, every) => {
    expect(retentionIntervalMs({ retentionMs, eventRetentionMs })).toBe(every);
  });
});
