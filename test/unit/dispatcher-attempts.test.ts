/**
 * The attempt runner (src/dispatcher/attempt-runner.ts) on its own: a real
 * slot book, lease table and settler; an executor whose attempts wait for the
 * test; the reporter replaced by a sink that records. No control plane.
 */
import { performance } from "node:perf_hooks";
import { describe, expect, test } from "vitest";
import { type AttemptHost, AttemptRunner } from "../../src/dispatcher/attempt-runner.js";
import { attemptVerdict } from "../../src/dispatcher/model-gate.js";
import { SlotBook } from "../../src/dispatcher/model-slots.js";
import { Settler } from "../../src/dispatcher/settler.js";
import {
  buffer,
  claim,
  completion,
  failure,
  granted,
  RecordingGate,
  RecordingSink,
  ScriptedExecutor,
  shared,
} from "./dispatcher-parts.js";

/** A runner over fresh parts; `gate` (if given) is every model's gate. */
function setup(gate?: RecordingGate) {
  const s = shared({}, new SlotBook(100, 0.5, gate ? () => gate : undefined));
  const sink = new RecordingSink();
  const executor = new ScriptedExecutor();
  const host = { paused: false, pokes: 0 };
  const hostView: AttemptHost = {
    paused: () => host.paused,
    afterAttempt: () => void host.pokes++,
  };
  const runner = new AttemptRunner(s, new Settler(s, sink, () => 0), executor, hostView);
  return { s, sink, executor, host, runner };
}

describe("AttemptRunner", () => {
  test("starts buffered claims up to the usable slots; an attempt's end starts the next before its report is queued", async () => {
    const { s, sink, executor, host, runner } = setup();
    const m = granted(s, "a", 2);
    const [c1, c2, c3, c4] = buffer(s, claim("a"), claim("a"), claim("a"), claim("a"));
    runner.pump(m);
    expect(executor.started).toEqual([c1!.ref.requestId, c2!.ref.requestId]);
    expect(m.running).toBe(2);
    expect(m.queue).toEqual([c3, c4]);
    let startedAtReport = -1;
    sink.once("submit", () => {
      startedAtReport = executor.calls.length;
    });
    executor.answer(c1!.ref.requestId, completion());
    await sink.until(1);
    expect(startedAtReport).toBe(3);
    expect(sink.submitted[0]!.report).toMatchObject({ ref: c1!.ref, kind: "outcome" });
    expect(host.pokes).toBe(1);
    expect(runner.counts).toEqual({ completions: 1, failures: 0 });
  });

  test("a buffered claim past its fencing deadline is never started, even before its timer fires (a busy event loop)", () => {
    const fenced: string[] = [];
    const s = shared(
      {
        marginMs: 0,
        onFenced: (e) => {
          fenced.push(e.lease.ref.requestId);
          s.book.find(e.lease.model)?.unqueue(e);
        },
      },
      new SlotBook(100, 0.5),
    );
    const executor = new ScriptedExecutor();
    const runner = new AttemptRunner(s, new Settler(s, new RecordingSink(), () => 0), executor, {
      paused: () => false,
      afterAttempt: () => undefined,
    });
    const m = granted(s, "late", 2);
    // A claim whose lease (1 ms) is over by the time the runner looks: its fence timer is
    // queued but has not run, as on an event loop busy for longer than the fencing margin.
    const [old, fresh] = buffer(s, claim("late", 1), claim("late"));
    const until = performance.now() + 5;
    while (performance.now() < until) {
      // the event loop is busy
    }
    runner.pump(m);
    expect(executor.started).toEqual([fresh!.ref.requestId]);
    expect(fenced).toEqual([old!.ref.requestId]);
    expect(m.queue).toEqual([]);
  });

  test("paused (stopping, or reports failing): nothing starts until a pump after it ends", () => {
    const { s, executor, host, runner } = setup();
    const m = granted(s, "a", 2);
    buffer(s, claim("a"));
    host.paused = true;
    runner.pumpAll();
    expect(executor.calls).toHaveLength(0);
    host.paused = false;
    runner.pumpAll();
    expect(executor.calls).toHaveLength(1);
    expect(m.running).toBe(1);
  });

  test("the gate is asked before each start with the model's running count; a refusal keeps the claim buffered until an attempt ends", async () => {
    const gate = new RecordingGate();
    gate.answer = (running) => (running < 1 ? 0 : Number.POSITIVE_INFINITY);
    const { s, sink, executor, runner } = setup(gate);
    const m = granted(s, "a", 3);
    const [c1, c2] = buffer(s, claim("a"), claim("a"));
    runner.pump(m);
    expect(executor.started).toEqual([c1!.ref.requestId]);
    expect(gate.asked).toEqual([
      { requestId: c1!.ref.requestId, running: 0 },
      { requestId: c2!.ref.requestId, running: 1 },
    ]);
    expect(m.queue).toEqual([c2]);
    executor.answer(c1!.ref.requestId, completion());
    await sink.until(1);
    expect(executor.started).toEqual([c1!.ref.requestId, c2!.ref.requestId]);
    expect(gate.ended.map((e) => e.requestId)).toEqual([c1!.ref.requestId]);
  });

  test("a gate that asks to wait is asked again after that wait, with nothing else happening", async () => {
    const gate = new RecordingGate();
    const WAIT_MS = 150;
    const openAt = performance.now() + WAIT_MS;
    gate.answer = (_running, now) => Math.max(0, openAt - now);
    const { s, executor, runner } = setup(gate);
    const m = granted(s, "a", 3);
    buffer(s, claim("a"));
    runner.pump(m);
    expect(executor.calls).toHaveLength(0);
    await executor.until(1);
    // The runner never starts it before the moment the gate named.
    expect(executor.calls[0]!.at).toBeGreaterThanOrEqual(openAt);
    expect(gate.asked.length).toBeGreaterThanOrEqual(2);
    runner.stop();
  });

  test("the gate hears how every admitted attempt ended: success, throttled (429; 503 with Retry-After), error, our own abort", async () => {
    const gate = new RecordingGate();
    const { s, sink, executor, runner } = setup(gate);
    const m = granted(s, "a", 5);
    const entries = buffer(s, claim("a"), claim("a"), claim("a"), claim("a"), claim("a"));
    runner.pump(m);
    const [ok, throttled, busy, broken, fenced] = entries.map((e) => e.ref.requestId);
    const limits = { "x-ratelimit-remaining-requests": "0" };
    executor.answer(ok!, completion());
    executor.answer(throttled!, failure(429, { retryAfterMs: 50, headers: limits }));
    executor.answer(busy!, failure(503, { retryAfterMs: 50 }));
    executor.answer(broken!, failure(500));
    s.table.giveUp(entries[4]!, "fenced", "test");
    await sink.until(5);
    const heard = new Map(gate.ended.map((e) => [e.requestId, e.result]));
    expect(attemptVerdict(heard.get(ok!)!)).toBe("success");
    expect(attemptVerdict(heard.get(throttled!)!)).toBe("throttled");
    expect(heard.get(throttled!)!.outcome.headers).toEqual(limits);
    expect(attemptVerdict(heard.get(busy!)!)).toBe("throttled");
    expect(attemptVerdict(heard.get(broken!)!)).toBe("error");
    expect(attemptVerdict(heard.get(fenced!)!)).toBe("aborted");
    expect(heard.get(ok!)!.elapsedMs).toBeGreaterThanOrEqual(0);
    runner.stop();
  });

  test("an attempt we gave up is reported as a release of a sent request; others keep their outcome", async () => {
    const { s, sink, executor, runner } = setup();
    const m = granted(s, "a", 2);
    const [lost, done] = buffer(s, claim("a"), claim("a"));
    runner.pump(m);
    s.table.giveUp(lost!, "lost", "renewal said so");
    executor.answer(done!.ref.requestId, failure(500));
    await sink.until(2);
    const byId = new Map(sink.submitted.map((x) => [x.report.ref.requestId, x.report]));
    expect(byId.get(lost!.ref.requestId)).toEqual({
      ref: lost!.ref,
      kind: "release",
      reason: "lost: renewal said so",
      unsent: false,
    });
    expect(byId.get(done!.ref.requestId)).toMatchObject({ kind: "outcome" });
    expect(runner.counts).toEqual({ completions: 0, failures: 1 });
  });

  test("a 429 holds nothing in the runner: the next claim starts at once (the gate paces, the request waits its own Retry-After)", async () => {
    const { s, executor, runner } = setup();
    const m = granted(s, "a", 1);
    const [first, second] = buffer(s, claim("a"), claim("a"));
    runner.pump(m);
    const RETRY_AFTER_MS = 60_000;
    executor.answer(first!.ref.requestId, failure(429, { retryAfterMs: RETRY_AFTER_MS }));
    await executor.until(2);
    expect(executor.started[1]).toBe(second!.ref.requestId);
    expect(m.heldUntil).toBe(0);
  });
});
