/**
 * Scenario "pacing" (docs/pacing.md): batches against a metered upstream
 * (test/helpers/metered-upstream.ts: per model, a bucket of one second of its
 * per-minute rate, 429 + Retry-After and `x-ratelimit-*` headers when empty)
 * in a process of its own, as a provider is (bench/metered-process.ts),
 * every request's outcome checked, measured at the upstream:
 *
 * - known: `limits set --rpm` equal to the meter's, a generous limit (500);
 * - unknown: the same meter with no rate set (adaptive concurrency only);
 * - tokens: a token meter, `--tpm` equal to it;
 * - random: an unmetered upstream answering 3 % of calls 429 at random, against the
 *   same run without them (limit 10, 30 ms);
 * - random-wide: the same at limit 500, 50 ms, 20,000 requests (a stray 429 must not
 *   hold a large model near the start of its slow start).
 *
 * Its ceiling is the meter itself: the figure is the rate achieved over the
 * meter's rate (accepted calls over the span from the first to the last), and
 * the share of calls answered 429. Checks: every custom_id back once, every
 * request completed (429s are backpressure: max_retries is 0 here), and never
 * more accepted in a minute than the meter's rate plus its one-second burst.
 */

import { performance } from "node:perf_hooks";
import { maxIn } from "../test/helpers/metered-upstream.js";
import {
  type Bench,
  benchDispatcher,
  chatJsonl,
  round,
  SMOKE,
  since,
  upload,
  waitFinished,
} from "./common.js";
import { type MeteredProcess, startMeteredProcess } from "./metered-process.js";

/** A meter's rate per model: 3,000 requests a minute (the case). */
const RPM = 3_000;
/** A token meter: 60,000 a minute, at ~50 tokens a call (≈ 1,200 calls a minute). */
const TPM = 60_000;
const MODELS = 2;
/** A generous limit, what a user with a big tier sets. */
const LIMIT = 500;
const LATENCY_MS = 50;

interface PacingCase {
  name: "known" | "unknown" | "bare" | "tokens";
  requests: number;
}

const CASES: readonly PacingCase[] = [
  { name: "known", requests: SMOKE ? 200 : 1_200 },
  { name: "unknown", requests: SMOKE ? 200 : 1_200 },
  // The same without x-ratelimit-* headers: only 429s to go by.
  { name: "bare", requests: SMOKE ? 200 : 1_200 },
  { name: "tokens", requests: SMOKE ? 200 : 1_200 },
];

/** A prompt of 112 characters (28 tokens) and max_tokens 16: 44 tokens estimated, 44 charged. */
const PROMPT = "p".repeat(112);

function batchFile(name: string, n: number): Buffer {
  return Buffer.from(
    chatJsonl(
      n,
      (i) => `pace-${name}-${i % MODELS}`,
      () => PROMPT,
    ),
  );
}

/** Runs a batch of `n` lines against `up` through one dispatcher; checks every custom_id. */
async function runBatch(
  bench: Bench,
  up: MeteredProcess,
  name: string,
  n: number,
): Promise<{ seconds: number; completed: number }> {
  const models = Array.from({ length: MODELS }, (_, i) => `pace-${name}-${i}`);
  const dispatcher = benchDispatcher(bench, models, `bench-pacing-${name}`);
  const t0 = performance.now();
  const seen = new Map<string, number>();
  let completed = 0;
  try {
    const fileId = await upload(bench.batch, batchFile(name, n), up.url);
    const { batch } = await bench.batch.createBatch({
      fileId,
      retryPolicy: { maxRetries: 0, initialBackoff: { seconds: 0n, nanos: 50_000_000 } },
    });
    await waitFinished(bench.batch, batch!.id);
    const status = await bench.batch.getBatchStatus({ batchId: batch!.id });
    completed = Number(status.counts?.completed ?? 0);
    for await (const r of bench.batch.getBatchResults({ batchId: batch!.id })) {
      seen.set(r.customId, (seen.get(r.customId) ?? 0) + 1);
    }
  } finally {
    await dispatcher.stop(1000);
  }
  let lost = 0;
  for (let i = 0; i < n; i++) if (seen.get(`req-${i}`) !== 1) lost++;
  if (lost > 0) bench.failures.push(`pacing ${name}: ${lost} custom_ids missing or duplicated`);
  if (completed !== n) {
    bench.failures.push(`pacing ${name}: ${n - completed} of ${n} requests did not complete`);
  }
  return { seconds: round(since(t0) / 1000), completed };
}

/** BENCH_PACING_TRACE=1: where a model's 429s fell, per half second from its first call. */
function traceThrottles(model: string, accepted: number[], throttledAt: number[]): void {
  const t0 = Math.min(
    accepted[0] ?? Number.POSITIVE_INFINITY,
    throttledAt[0] ?? Number.POSITIVE_INFINITY,
  );
  const per = new Map<number, number>();
  for (const t of throttledAt) {
    const k = Math.floor((t - t0) / 500) / 2;
    per.set(k, (per.get(k) ?? 0) + 1);
  }
  const text = [...per].map(([s, n]) => `${s}s:${n}`).join(" ");
  process.stderr.write(`pacing ${model}: 429s by half second from its first call: ${text}\n`);
}

/** What the upstream saw of a case's models: calls, 429s, the rate achieved. */
async function seenAt(
  up: MeteredProcess,
  name: string,
  perMinute: number,
  unit: "requests" | "tokens",
) {
  let calls = 0;
  let throttled = 0;
  let achieved = 0;
  let worstMinute = 0;
  for (let i = 0; i < MODELS; i++) {
    const r = await up.record(`pace-${name}-${i}`);
    calls += r.calls;
    throttled += r.metered + r.random;
    const span = (r.accepted[r.accepted.length - 1]! - r.accepted[0]!) / 60_000;
    const amount = unit === "requests" ? r.accepted.length : r.tokens.reduce((a, b) => a + b, 0);
    achieved += span > 0 ? amount / span : 0;
    worstMinute = Math.max(worstMinute, maxIn(r.accepted, 60_000));
    if (process.env.BENCH_PACING_TRACE) traceThrottles(`${name}-${i}`, r.accepted, r.throttledAt);
  }
  return {
    calls,
    throttled,
    throttled_share: round(throttled / Math.max(1, calls), 3),
    // Per model, averaged: the rate achieved over the meter's.
    rate_achieved_per_min: Math.round(achieved / MODELS),
    ratio_to_meter: round(achieved / MODELS / perMinute, 3),
    most_accepted_in_a_minute: worstMinute,
  };
}

async function meteredCase(bench: Bench, c: PacingCase): Promise<Record<string, unknown>> {
  const tokens = c.name === "tokens";
  const meter = tokens ? { tpm: TPM } : { rpm: RPM };
  const up = await startMeteredProcess({
    meters: Object.fromEntries(
      Array.from({ length: MODELS }, (_, i) => [`pace-${c.name}-${i}`, meter]),
    ),
    latencyMs: LATENCY_MS,
    rateLimitHeaders: c.name !== "bare",
  });
  try {
    for (let i = 0; i < MODELS; i++) {
      const model = `pace-${c.name}-${i}`;
      if (c.name === "known") await bench.admin.setModelLimit({ model, limit: LIMIT, rpm: RPM });
      else if (tokens) await bench.admin.setModelLimit({ model, limit: LIMIT, tpm: TPM });
      else await bench.admin.setModelLimit({ model, limit: LIMIT });
    }
    const run = await runBatch(bench, up, c.name, c.requests);
    const at = await seenAt(up, c.name, tokens ? TPM : RPM, tokens ? "tokens" : "requests");
    return {
      case: c.name,
      meter: tokens ? `${TPM} tokens/min` : `${RPM} requests/min`,
      rate_set: c.name === "known" ? `--rpm ${RPM}` : tokens ? `--tpm ${TPM}` : "none",
      rate_limit_headers: c.name !== "bare",
      limit: LIMIT,
      requests: c.requests,
      ...run,
      ...at,
    };
  } finally {
    await up.close();
  }
}

/** A random-429 case: its limit per model, the upstream's latency, its requests. */
interface RandomCase {
  name: "random" | "random-wide";
  limit: number;
  latencyMs: number;
  requests: number;
}

const RANDOM_CASES: readonly RandomCase[] = [
  { name: "random", limit: 10, latencyMs: 30, requests: SMOKE ? 200 : 2_000 },
  // A large limit: a stray 429 must not hold the model near slow start's beginning.
  { name: "random-wide", limit: 500, latencyMs: 50, requests: SMOKE ? 400 : 20_000 },
];

/** 3 % random 429s: throughput against the same run without them. */
async function randomCase(bench: Bench, c: RandomCase): Promise<Record<string, unknown>> {
  const n = c.requests;
  const out: Record<string, number> = {};
  for (const [name, p] of [
    [`${c.name}-clean`, 0],
    [c.name, 0.03],
  ] as const) {
    const up = await startMeteredProcess({ latencyMs: c.latencyMs, randomThrottle: p });
    try {
      for (let i = 0; i < MODELS; i++) {
        await bench.admin.setModelLimit({ model: `pace-${name}-${i}`, limit: c.limit });
      }
      const run = await runBatch(bench, up, name, n);
      const key = p === 0 ? "clean" : "random";
      out[`${key}_seconds`] = run.seconds;
      out[`${key}_throttled`] = (await seenAt(up, name, 1, "requests")).throttled;
    } finally {
      await up.close();
    }
  }
  return {
    case: c.name,
    limit: c.limit,
    latency_ms: c.latencyMs,
    requests: n,
    ...out,
    throughput_ratio: round(out.clean_seconds! / out.random_seconds!, 3),
  };
}

/** Runs every pacing case. */
export async function pacingScenario(bench: Bench): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  const only = process.env.BENCH_PACING?.split(",");
  for (const c of CASES) if (!only || only.includes(c.name)) out.push(await meteredCase(bench, c));
  for (const c of RANDOM_CASES) {
    if (!only || only.includes(c.name)) out.push(await randomCase(bench, c));
  }
  return out;
}
