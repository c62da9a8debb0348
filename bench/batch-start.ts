/**
 * Scenario "batch start and turnaround":
 * - CreateBatch of the 50,000-line file, against the same snapshot written
 *   in SQL (batch row + `INSERT … SELECT` from its templates, one transaction);
 * - CreateBatch → the batch's first request reaching the upstream, with a
 *   dispatcher idle and waiting (p50/p99 over several small batches), against
 *   a direct request's trip to the same upstream;
 * - turnaround: with limit 1 on a model, the gap at the upstream between one
 *   response sent and the next request of that model arriving (p50/p99),
 *   against one plain undici loop (the ceiling with limit 1).
 */

import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { Agent } from "undici";
import { requestBody, runCeiling } from "./ceiling.js";
import {
  type Bench,
  benchDispatcher,
  jsonl,
  round,
  scaled,
  since,
  spread,
  upload,
  waitFinished,
} from "./common.js";
import type { IngestOutcome } from "./ingest.js";
import { BenchUpstream } from "./upstream.js";

const FIRST_MODEL = "bench-first";
const TURN_MODEL = "bench-turn";
/** Upstream latency here: short, so that the figures are the system's turnaround. */
const LATENCY_MS = 5;

/** CreateBatch of the uploaded file vs the same snapshot in SQL (of the COPY'd file). Both batches are deleted after. */
async function createBatchFigures(bench: Bench, ingest: IngestOutcome) {
  let t0 = performance.now();
  const { batch } = await bench.batch.createBatch({ fileId: ingest.uploadedFileId });
  const apiMs = since(t0);
  const client = new pg.Client({ connectionString: bench.databaseUrl });
  await client.connect();
  let sqlMs: number;
  try {
    t0 = performance.now();
    await client.query("BEGIN");
    const { rows } = await client.query<{ id: string }>(
      `INSERT INTO batches (file_id, completion_window, max_retries, initial_backoff_ms,
         max_backoff_ms, total_count, pending_count, expires_at)
       VALUES ($1, '24h', 5, 1000, 60000, $2, $2, now() + interval '24 hours') RETURNING id`,
      [ingest.copiedFileId, ingest.lines],
    );
    await client.query(
      `INSERT INTO requests (batch_id, line, custom_id, endpoint, method, path, body, model, api_key_id)
       SELECT $1, line, custom_id, endpoint, method, path, body, model, api_key_id
       FROM request_templates WHERE file_id = $2`,
      [rows[0]!.id, ingest.copiedFileId],
    );
    await client.query("COMMIT");
    sqlMs = since(t0);
    // Nobody serves their model; deleted so that later scenarios run on a small table.
    await client.query(`DELETE FROM batches WHERE id = ANY($1::uuid[])`, [
      [batch!.id, rows[0]!.id],
    ]);
  } finally {
    await client.end();
  }
  return {
    requests: ingest.lines,
    create_batch_s: round(apiMs / 1000, 3),
    sql_snapshot_s: round(sqlMs / 1000, 3),
    ratio_to_sql: round(sqlMs / apiMs, 3),
  };
}

/** CreateBatch → first upstream arrival, `reps` small batches, dispatcher idle before each. */
async function firstCallFigures(bench: Bench, up: BenchUpstream, reps: number) {
  const fileId = await upload(bench.batch, jsonl(5, [FIRST_MODEL], 16), up.url);
  const samples: number[] = [];
  for (let i = 0; i < reps; i++) {
    await sleep(100); // the dispatcher is back in its waiting acquire call
    up.reset();
    const t0 = performance.now();
    const { batch } = await bench.batch.createBatch({ fileId });
    await waitFinished(bench.batch, batch!.id);
    samples.push(up.of(FIRST_MODEL).firstAt - t0);
  }
  // The ceiling: one request straight to the upstream over a warm connection.
  const agent = new Agent({ connections: 1 });
  const { origin } = new URL(up.url);
  const body = JSON.stringify(requestBody(`${FIRST_MODEL}-ceiling`, "x"));
  const direct: number[] = [];
  try {
    for (let i = 0; i <= reps; i++) {
      up.reset();
      const t0 = performance.now();
      const res = await agent.request({ origin, path: "/", method: "POST", body });
      await res.body.text();
      if (i > 0) direct.push(up.of(`${FIRST_MODEL}-ceiling`).firstAt - t0); // i = 0 warms up
    }
  } finally {
    await agent.close();
  }
  const fus = spread(samples);
  const ceiling = spread(direct);
  return {
    ...fus,
    ceiling_direct_request: ceiling,
    ratio_p50_to_ceiling: round(fus.p50_ms / ceiling.p50_ms, 1),
  };
}

/** Response sent → next request of a limit-1 model at the upstream. */
async function turnaroundFigures(bench: Bench, up: BenchUpstream, requests: number) {
  await bench.admin.setModelLimit({ model: TURN_MODEL, limit: 1 });
  const fileId = await upload(bench.batch, jsonl(requests, [TURN_MODEL], 16), up.url);
  up.reset();
  const { batch } = await bench.batch.createBatch({ fileId });
  await waitFinished(bench.batch, batch!.id);
  const fus = spread(up.of(TURN_MODEL).gaps);
  const peak = up.of(TURN_MODEL).peak;
  if (peak > 1) bench.failures.push(`turnaround: ${peak} of a limit-1 model in flight`);
  up.reset();
  const ceilingModel = `${TURN_MODEL}-ceiling`;
  await runCeiling(up.url, [{ model: ceilingModel, limit: 1, requests }], 16);
  const ceiling = spread(up.of(ceilingModel).gaps);
  return {
    ...fus,
    upstream_latency_ms: LATENCY_MS,
    ceiling_undici_loop: ceiling,
    ratio_p50_to_ceiling: round(fus.p50_ms / ceiling.p50_ms, 1),
  };
}

/** CreateBatch of 50,000, first-call latency, turnaround. */
export async function batchStartScenario(
  bench: Bench,
  ingest: IngestOutcome,
): Promise<Record<string, unknown>> {
  const createBatch = await createBatchFigures(bench, ingest);
  const up = new BenchUpstream(LATENCY_MS);
  await up.start();
  await bench.admin.setModelLimit({ model: FIRST_MODEL, limit: 10 });
  const dispatcher = benchDispatcher(bench, [FIRST_MODEL, TURN_MODEL], "bench-start");
  try {
    const firstCall = await firstCallFigures(bench, up, scaled(40, 5));
    const turnaround = await turnaroundFigures(bench, up, scaled(400, 30));
    return { create_batch: createBatch, first_call: firstCall, turnaround };
  } finally {
    await dispatcher.stop(1000);
    await up.close();
  }
}
