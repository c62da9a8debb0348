/**
 * Scenario "dispatch": a batch end to end through the client path — UploadFile
 * (streamed), CreateBatch, one dispatcher until the batch has finished, then
 * GetBatchResults read to the end, every custom_id counted — against the
 * no-database ceiling (./ceiling.ts) with the same limits, upstream and
 * request count, in the same run. Checked: the upstream never saw more than
 * a model's limit in flight, and every custom_id came back exactly once.
 */
import { performance } from "node:perf_hooks";
import { runCeiling } from "./ceiling.js";
import {
  type Bench,
  benchDispatcher,
  jsonl,
  round,
  scaled,
  since,
  upload,
  waitFinished,
} from "./common.js";
import { BenchUpstream, meanWhileBusy } from "./upstream.js";

export interface DispatchCase {
  name: string;
  limit: number;
  latencyMs: number;
  requests: number;
}

/** The cases of the brief: (a) limit 500, 50 ms, 20,000; (b) limit 100, 20 ms, 10,000; (c) limit 100, 500 ms, 4,000. Smoke: 1 % of the requests, 10 % of the limits (so there are still many waves). */
export const DISPATCH_CASES: readonly DispatchCase[] = [
  { name: "a", limit: scaled(500, 50), latencyMs: 50, requests: scaled(20_000, 200) },
  { name: "b", limit: scaled(100, 10), latencyMs: 20, requests: scaled(10_000, 100) },
  // LLM-like latency: the share of the limit in use (target ≥ 97 %).
  { name: "c", limit: scaled(100, 10), latencyMs: 500, requests: scaled(4_000, 100) },
];

/** Body padding of a dispatch request (≈ 150-byte lines). */
const PAD = 64;

interface ModelFigures {
  limit: number;
  delivered: number;
  peak_in_flight: number;
  mean_in_flight_busy: number;
  /** mean in flight while busy ÷ limit. */
  limit_use: number;
}

function modelFigures(up: BenchUpstream, model: string, limit: number): ModelFigures {
  const l = up.of(model);
  const mean = meanWhileBusy(l);
  return {
    limit,
    delivered: l.delivered,
    peak_in_flight: l.peak,
    mean_in_flight_busy: round(mean, 1),
    limit_use: round(mean / limit, 3),
  };
}

/** Runs one case: ceiling first, then Fusillade; returns its figures. */
async function runCase(bench: Bench, c: DispatchCase): Promise<Record<string, unknown>> {
  const models = [`dispatch-${c.name}-1`, `dispatch-${c.name}-2`];
  const up = new BenchUpstream(c.latencyMs);
  await up.start();
  try {
    for (const model of models) await bench.admin.setModelLimit({ model, limit: c.limit });
    const perModel = Math.ceil(c.requests / models.length);

    // The ceiling: same upstream, limits and request count, no database.
    up.reset();
    const ceilingMs = await runCeiling(
      up.url,
      models.map((model, i) => ({
        model,
        limit: c.limit,
        requests: i === 0 ? perModel : c.requests - perModel,
      })),
      PAD,
    );
    const ceiling = {
      seconds: round(ceilingMs / 1000),
      requests_per_s: Math.round(c.requests / (ceilingMs / 1000)),
      upstream: Object.fromEntries(models.map((m) => [m, modelFigures(up, m, c.limit)])),
    };

    // Fusillade, through the client path; the dispatcher is idle and waiting first.
    up.reset();
    const dispatcher = benchDispatcher(bench, models, `bench-dispatch-${c.name}`);
    const content = jsonl(c.requests, models, PAD);
    let seen: Map<string, number>;
    const t0 = performance.now();
    let uploadMs: number;
    let dispatchMs: number;
    let resultsMs: number;
    try {
      const fileId = await upload(bench.batch, content, up.url);
      uploadMs = since(t0);
      const t1 = performance.now();
      const { batch } = await bench.batch.createBatch({ fileId });
      await waitFinished(bench.batch, batch!.id);
      dispatchMs = since(t1);
      const t2 = performance.now();
      seen = new Map();
      for await (const r of bench.batch.getBatchResults({ batchId: batch!.id })) {
        seen.set(r.customId, (seen.get(r.customId) ?? 0) + 1);
      }
      resultsMs = since(t2);
    } finally {
      await dispatcher.stop(1000);
    }
    const wallMs = since(t0);

    let missing = 0;
    let duplicated = 0;
    for (let i = 0; i < c.requests; i++) {
      const n = seen.get(`req-${i}`) ?? 0;
      if (n === 0) missing++;
      if (n > 1) duplicated++;
    }
    const unknown = [...seen.keys()].filter((k) => !/^req-\d+$/.test(k)).length;
    if (missing + duplicated + unknown > 0) {
      bench.failures.push(
        `dispatch ${c.name}: results had ${missing} custom_ids missing, ${duplicated} duplicated, ${unknown} unknown`,
      );
    }
    const upstream = Object.fromEntries(models.map((m) => [m, modelFigures(up, m, c.limit)]));
    for (const [m, f] of Object.entries(upstream)) {
      if (f.peak_in_flight > c.limit) {
        bench.failures.push(
          `dispatch ${c.name}: the upstream saw ${f.peak_in_flight} of ${m} in flight (limit ${c.limit})`,
        );
      }
    }
    for (const [m, f] of Object.entries(ceiling.upstream)) {
      if (f.peak_in_flight > c.limit) {
        bench.failures.push(`dispatch ${c.name}: the ceiling itself exceeded ${m}'s limit`);
      }
    }
    const rps = c.requests / (wallMs / 1000);
    const dispatchRps = c.requests / (dispatchMs / 1000);
    return {
      case: c.name,
      models: models.length,
      limit_per_model: c.limit,
      upstream_latency_ms: c.latencyMs,
      requests: c.requests,
      fusillade: {
        seconds: round(wallMs / 1000),
        upload_s: round(uploadMs / 1000),
        create_to_finished_s: round(dispatchMs / 1000),
        results_s: round(resultsMs / 1000),
        requests_per_s: Math.round(rps),
        // CreateBatch → finished only: the dispatch itself, without upload and results.
        create_to_finished_requests_per_s: Math.round(dispatchRps),
        result_lines: [...seen.values()].reduce((a, b) => a + b, 0),
        missing,
        duplicated,
        upstream,
      },
      ceiling,
      ratio_to_ceiling: round(rps / ceiling.requests_per_s, 3),
      create_to_finished_ratio_to_ceiling: round(dispatchRps / ceiling.requests_per_s, 3),
    };
  } finally {
    await up.close();
  }
}

/** Runs every dispatch case. */
export async function dispatchScenario(bench: Bench): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for (const c of DISPATCH_CASES) out.push(await runCase(bench, c));
  return out;
}
