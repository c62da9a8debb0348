/**
 * The dispatcher thread of `serve` (src/dispatcher/thread.ts): a thread that
 * dies on its own is reported, once (serve then exits instead of accepting
 * batches it would never run); a thread told to stop is not.
 */
import { describe, expect, test } from "vitest";
import { dispatcherConfig } from "../../src/config/dispatcher-config.js";
import { startDispatcherThread } from "../../src/dispatcher/thread.js";
import { makeLogger } from "../../src/logger.js";

const base = dispatcherConfig({ controlPlane: "http://127.0.0.1:9" }, {});
const log = makeLogger("silent");
const entry = new URL("../fixtures/dispatcher-thread.mjs", import.meta.url);

/** Starts the stand-in thread in `mode`; resolves with the first crash report. */
function start(mode: string, crashes: Error[]) {
  let reported: (e: Error) => void = () => undefined;
  const firstCrash = new Promise<Error>((r) => {
    reported = r;
  });
  const d = startDispatcherThread({ ...base, id: mode }, log, {
    onCrash: (e) => {
      crashes.push(e);
      reported(e);
    },
    entry,
  });
  return { d, firstCrash };
}

describe("dispatcher thread", () => {
  test("a thread that throws is reported once (not again for its exit)", async () => {
    const crashes: Error[] = [];
    const { d, firstCrash } = start("crash", crashes);
    expect((await firstCrash).message).toContain("the dispatcher thread hit a bug");
    await d.stop(100); // resolves: the thread is gone
    expect(crashes).toHaveLength(1);
  });

  test("a thread that exits on its own is reported", async () => {
    const crashes: Error[] = [];
    const { firstCrash } = start("exit", crashes);
    expect((await firstCrash).message).toContain("exited with code 3");
  });

  test("metrics() asks the thread for its registry's text", async () => {
    const { d } = start("obey", []);
    const [a, b] = await Promise.all([d.metrics(), d.metrics()]);
    expect(a).toBe('fusillade_dispatcher_stand_in{id="obey"} 1\n');
    expect(b).toBe(a);
    await d.stop(100);
    expect(await d.metrics()).toBe("");
  });

  test("a thread that does not answer adds nothing to a scrape", async () => {
    const { d } = start("mute", []);
    // It waits for the thread as long as METRICS_TIMEOUT_MS (src/dispatcher/thread.ts), less
    // timer slack: a lower bound, which a slow machine cannot break.
    const METRICS_TIMEOUT_MS = 2000;
    const started = Date.now();
    expect(await d.metrics()).toBe("");
    expect(Date.now() - started).toBeGreaterThanOrEqual(METRICS_TIMEOUT_MS - 100);
    await d.stop(100);
  });

  test("a thread told to stop is not reported", async () => {
    const crashes: Error[] = [];
    const { d } = start("obey", crashes);
    await d.stop(100);
    expect(crashes).toEqual([]);
  });
});
