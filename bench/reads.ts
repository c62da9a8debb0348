/**
 * Scenario "reads on a big batch": GetBatchStatus, and ListBatchRequests
 * pages (page_size 100, filtered to failed requests, walked page after page),
 * on one batch of 1,000,000 requests in mixed states (p50/p99 over ~200
 * calls each), against the best plain SQL for the same answers on one
 * prepared connection: the batch row by id, and the next 100 failed requests
 * by the (batch_id, state, line) index. Then GetBatchResults of a finished
 * batch of 20,000 completed requests against plain SQL (./reads-results.ts).
 *
 * The batch is written with SQL (generate_series: files, request_templates,
 * batches with counters that match, requests) — through the API it would
 * take far longer than everything measured here. The states, by line % 20:
 * 0 failed (5 %), 1 leased (5 %, lease held for a day by nobody), 2–5
 * pending (20 %), the rest completed (70 %). Its model has no dispatcher.
 */
import { performance } from "node:perf_hooks";
import pg from "pg";
import { RequestState } from "../src/gen/fusillade/v1/resources_pb.js";
import { type Bench, round, scaled, since, spread, sqlFile } from "./common.js";
import { resultsFigure } from "./reads-results.js";

const MODEL = "bench-reads";
const CALLS = 200;

type State = "failed" | "leased" | "pending" | "completed";

function stateOf(line: number): State {
  const r = line % 20;
  return r === 0 ? "failed" : r === 1 ? "leased" : r <= 5 ? "pending" : "completed";
}

/** The SQL version of stateOf, on column `line`. */
const STATE_SQL = `CASE WHEN line % 20 = 0 THEN 'failed' WHEN line % 20 = 1 THEN 'leased'
  WHEN line % 20 <= 5 THEN 'pending' ELSE 'completed' END`;

/** Writes the batch; its id. */
async function buildBatch(client: pg.Client, n: number): Promise<string> {
  const counts: Record<State, number> = { failed: 0, leased: 0, pending: 0, completed: 0 };
  for (let line = 1; line <= n; line++) counts[stateOf(line)]++;
  await client.query("BEGIN");
  const fileId = await sqlFile(client, n, MODEL, "bench-reads.jsonl");
  const batch = await client.query<{ id: string }>(
    `INSERT INTO batches (file_id, completion_window, max_retries, initial_backoff_ms,
       max_backoff_ms, total_count, pending_count, leased_count, completed_count, failed_count,
       expires_at)
     VALUES ($1, '24h', 5, 1000, 60000, $2, $3, $4, $5, $6, now() + interval '24 hours')
     RETURNING id`,
    [fileId, n, counts.pending, counts.leased, counts.completed, counts.failed],
  );
  const batchId = batch.rows[0]!.id;
  // Inserts fire no trigger (it is AFTER UPDATE): the counters above are the truth.
  await client.query(
    `INSERT INTO requests (batch_id, line, custom_id, endpoint, method, path, body, model, api_key_id,
       state, attempt, lease_token, lease_holder, lease_expires_at, response_status,
       response_headers, response_body, error_code, error_message, finished_at)
     SELECT $1, line, custom_id, endpoint, method, path, body, model, api_key_id, state,
       CASE WHEN state = 'pending' THEN 0 ELSE 1 END,
       CASE WHEN state = 'leased' THEN nextval('lease_token_seq') END,
       CASE WHEN state = 'leased' THEN 'bench-nobody' END,
       CASE WHEN state = 'leased' THEN now() + interval '1 day' END,
       CASE WHEN state = 'completed' THEN 200 END,
       CASE WHEN state = 'completed' THEN '{"content-type":"application/json"}'::jsonb END,
       CASE WHEN state = 'completed' THEN '{"id":"cmpl","object":"chat.completion","choices":[]}'::bytea END,
       CASE WHEN state = 'failed' THEN 'http_error' END,
       CASE WHEN state = 'failed' THEN 'upstream said 400' END,
       CASE WHEN state IN ('completed', 'failed') THEN now() END
     FROM (SELECT t.*, ${STATE_SQL} AS state FROM request_templates t WHERE file_id = $2) t`,
    [batchId, fileId],
  );
  await client.query(
    `INSERT INTO model_limits (model, max_in_flight) VALUES ($1, 0)
    ON CONFLICT (model) DO UPDATE SET max_in_flight = 0`,
    [MODEL],
  );
  await client.query("COMMIT");
  // What autovacuum would do soon after such a load; the planner needs it.
  await client.query("ANALYZE requests");
  await client.query("ANALYZE batches");
  // Check: the counters equal a COUNT(*) … GROUP BY state (invariant 5).
  const check = await client.query<{ state: State; n: string }>(
    `SELECT state, count(*) AS n FROM requests WHERE batch_id = $1 GROUP BY state`,
    [batchId],
  );
  for (const r of check.rows) {
    if (Number(r.n) !== counts[r.state]) throw new Error(`reads: ${r.state} count mismatch`);
  }
  return batchId;
}

/** p50/p99 of `calls` runs of `fn`. */
async function timeCalls(calls: number, fn: (i: number) => Promise<void>): Promise<number[]> {
  const ms: number[] = [];
  for (let i = 0; i < calls; i++) {
    const t0 = performance.now();
    await fn(i);
    ms.push(since(t0));
  }
  return ms;
}

/** Reads on a 1,000,000-request batch (smoke: 10,000), and results of a 20,000-request one (smoke: 200). */
export async function readsScenario(bench: Bench): Promise<Record<string, unknown>> {
  const n = scaled(1_000_000, 10_000);
  const client = new pg.Client({ connectionString: bench.databaseUrl });
  await client.connect();
  try {
    const t0 = performance.now();
    const batchId = await buildBatch(client, n);
    const buildS = since(t0) / 1000;

    // Warm-up, then measure: API, then its SQL ceiling.
    await bench.batch.getBatchStatus({ batchId });
    const status = await timeCalls(CALLS, async () => {
      const s = await bench.batch.getBatchStatus({ batchId });
      if (Number(s.counts!.total) !== n) throw new Error("reads: GetBatchStatus total is wrong");
    });
    const statusSql = await timeCalls(CALLS, async () => {
      await client.query({
        name: "status",
        text: "SELECT * FROM batches WHERE id = $1",
        values: [batchId],
      });
    });

    let token = "";
    let pages = 0;
    const list = await timeCalls(CALLS, async () => {
      const page = await bench.batch.listBatchRequests({
        batchId,
        pageSize: 100,
        pageToken: token,
        states: [RequestState.FAILED],
      });
      if (page.requests.length === 0) throw new Error("reads: an empty page of failed requests");
      token = page.nextPageToken; // from the first page again once the last is read
      pages++;
    });
    let afterLine = 0;
    const listSql = await timeCalls(CALLS, async () => {
      const { rows } = await client.query<{ line: number }>({
        name: "list",
        text: `SELECT * FROM requests WHERE batch_id = $1 AND state = 'failed' AND line > $2
               ORDER BY line LIMIT 101`,
        values: [batchId, afterLine],
      });
      afterLine = rows.length > 100 ? rows[99]!.line : 0;
    });

    const results = await resultsFigure(bench, client);

    const st = spread(status);
    const stSql = spread(statusSql);
    const ls = spread(list);
    const lsSql = spread(listSql);
    return {
      requests: n,
      build_s: round(buildS, 1),
      get_batch_status: { ...st, sql: stSql, ratio_p50_to_sql: round(st.p50_ms / stSql.p50_ms, 1) },
      list_batch_requests_failed: {
        ...ls,
        pages,
        sql: lsSql,
        ratio_p50_to_sql: round(ls.p50_ms / lsSql.p50_ms, 1),
      },
      get_batch_results: results,
    };
  } finally {
    await client.end();
  }
}
