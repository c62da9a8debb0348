/**
 * The reads scenario's results figure: GetBatchResults of a finished batch
 * of 20,000 completed requests with ~1 KiB chat-completion bodies, read to
 * the end by the bench's Connect client, every custom_id counted — against
 * plain SQL on one pg connection reading the same rows, bodies and request
 * ids in the same order (one statement on the (batch_id, line) index: the
 * cheapest query that returns what the RPC returns). Printed as a ratio of
 * rates (issue 18's target: ≥ 0.5, within 2×), beside the same messages
 * from a bare Connect server (./results-transport.ts): what one line a
 * message through Connect costs whatever the results path.
 *
 * The batch is written with SQL, as ./reads.ts writes its big one: every
 * request completed, status 200, the headers the dispatcher keeps
 * (x-request-id, openai-processing-ms, x-ratelimit-*) and a compact JSON body
 * as an OpenAI-style upstream sends it.
 */
import { performance } from "node:perf_hooks";
import type pg from "pg";
import { connect } from "../src/cli/client/connection.js";
import { linesOf, RESULT_LINES_PER_MESSAGE } from "../src/client/result-lines.js";
import type { GetBatchResultsResponse } from "../src/gen/fusillade/v1/batch_service_pb.js";
import { type Bench, percentile, round, scaled, since, sqlFile } from "./common.js";
import { transportOnly } from "./results-transport.js";

const MODEL = "bench-results";
/** Reads of each side, alternated (after one warm-up of each); the median is reported. */
const ROUNDS = 3;

/** A chat completion's body for line `g` (SQL), ~1 KiB: ~810 bytes of content. */
const BODY_SQL = `convert_to('{"id":"chatcmpl-' || g || '","object":"chat.completion","created":1765000000,'
  || '"model":"${MODEL}","choices":[{"index":0,"message":{"role":"assistant","content":"Answer '
  || g || ': ' || repeat('The quick brown fox jumps over the lazy dog. ', 18)
  || '"},"logprobs":null,"finish_reason":"stop"}],'
  || '"usage":{"prompt_tokens":12,"completion_tokens":180,"total_tokens":192}}', 'UTF8')`;

/** The headers the dispatcher keeps of such a response (src/http/classify.ts keepHeaders). */
const HEADERS_SQL = `jsonb_build_object('x-request-id', 'req_' || md5(g::text),
  'openai-processing-ms', (300 + g % 500)::text, 'x-ratelimit-limit-requests', '10000',
  'x-ratelimit-remaining-requests', '9999', 'x-ratelimit-reset-requests', '6ms')`;

/** Writes a finished batch of `n` completed requests; its id and the bytes of its bodies. */
async function buildResultsBatch(
  client: pg.Client,
  n: number,
): Promise<{ batchId: string; bodyMiB: number }> {
  await client.query("BEGIN");
  const fileId = await sqlFile(client, n, MODEL, "bench-results.jsonl");
  const batch = await client.query<{ id: string }>(
    `INSERT INTO batches (file_id, completion_window, max_retries, initial_backoff_ms,
       max_backoff_ms, total_count, pending_count, completed_count, expires_at, finished_at)
     VALUES ($1, '24h', 5, 1000, 60000, $2, 0, $2, now() + interval '24 hours', now())
     RETURNING id`,
    [fileId, n],
  );
  const batchId = batch.rows[0]!.id;
  // Inserts fire no trigger (it is AFTER UPDATE): the counters above are the truth.
  await client.query(
    `INSERT INTO requests (batch_id, line, custom_id, endpoint, method, path, body, model,
       state, attempt, response_status, response_headers, response_body, finished_at)
     SELECT $1, g, custom_id, endpoint, method, path, body, model,
       'completed', 1, 200, ${HEADERS_SQL}, ${BODY_SQL}, now()
     FROM (SELECT t.*, t.line AS g FROM request_templates t WHERE file_id = $2) t`,
    [batchId, fileId],
  );
  await client.query("COMMIT");
  await client.query("ANALYZE requests");
  const size = await client.query<{ bytes: string }>(
    "SELECT sum(octet_length(response_body)) AS bytes FROM requests WHERE batch_id = $1",
    [batchId],
  );
  return { batchId, bodyMiB: Number(size.rows[0]!.bytes) / 2 ** 20 };
}

/**
 * The ceiling: one statement, on one connection, returning per line what a
 * result line is made of (our id, custom_id, status, the request id the line
 * shows, body, error) in line order.
 */
const RESULTS_SQL = `
  SELECT id, custom_id, response_status,
    coalesce(response_headers ->> 'x-request-id', response_headers ->> 'request-id') AS request_id,
    response_body, error_code, error_message
  FROM requests WHERE batch_id = $1 AND state = ANY($2::text[]) ORDER BY line`;
const TERMINAL = ["completed", "failed", "canceled", "expired"];

/** Counts custom ids `req-1…req-n` in `seen`; failures for any missing, doubled or unknown. */
function checkSeen(bench: Bench, who: string, seen: Map<string, number>, n: number): void {
  let missing = 0;
  let duplicated = 0;
  for (let i = 1; i <= n; i++) {
    const k = seen.get(`req-${i}`) ?? 0;
    if (k === 0) missing++;
    if (k > 1) duplicated++;
  }
  const unknown = seen.size - (n - missing);
  if (missing + duplicated + unknown > 0) {
    bench.failures.push(
      `reads: ${who} had ${missing} custom_ids missing, ${duplicated} duplicated, ${unknown} unknown`,
    );
  }
}

/** GetBatchResults of a finished 20,000-request batch (smoke: 200) against plain SQL. */
export async function resultsFigure(
  bench: Bench,
  client: pg.Client,
): Promise<Record<string, unknown>> {
  const n = scaled(20_000, 200);
  const t0 = performance.now();
  const { batchId, bodyMiB } = await buildResultsBatch(client, n);
  const buildS = since(t0) / 1000;

  // Read as the CLI reads: its connection (on loopback it asks for no compression).
  const cli = connect(bench.cpUrl);
  /**
   * One read to the end through `batch`'s GetBatchResults, `linesPerMessage`
   * lines an answer (0: one), its messages pushed on `keep`.
   */
  const rpc = async (
    batch = cli.batch,
    who = "GetBatchResults",
    linesPerMessage = RESULT_LINES_PER_MESSAGE,
    keep?: GetBatchResultsResponse[],
  ): Promise<number> => {
    const seen = new Map<string, number>();
    const t = performance.now();
    for await (const m of batch.getBatchResults({ batchId, linesPerMessage })) {
      for (const r of linesOf(m)) {
        seen.set(r.customId, (seen.get(r.customId) ?? 0) + 1);
      }
      keep?.push(m);
    }
    const ms = since(t);
    checkSeen(bench, who, seen, n);
    return ms;
  };
  const sql = async (): Promise<number> => {
    const seen = new Map<string, number>();
    const t = performance.now();
    const { rows } = await client.query<{ custom_id: string }>({
      name: "results",
      text: RESULTS_SQL,
      values: [batchId, TERMINAL],
    });
    for (const r of rows) seen.set(r.custom_id, (seen.get(r.custom_id) ?? 0) + 1);
    const ms = since(t);
    checkSeen(bench, "the results SQL", seen, n);
    return ms;
  };
  const messages: GetBatchResultsResponse[] = [];
  await rpc(cli.batch, "GetBatchResults", 0, messages);
  await rpc();
  await sql();
  const transport = await transportOnly(messages);
  const rpcMs: number[] = [];
  const singleMs: number[] = [];
  const sqlMs: number[] = [];
  const transportMs: number[] = [];
  try {
    await rpc(transport.batch, "the transport alone", 0);
    for (let i = 0; i < ROUNDS; i++) {
      rpcMs.push(await rpc());
      singleMs.push(await rpc(cli.batch, "GetBatchResults, a line an answer", 0));
      sqlMs.push(await sql());
      transportMs.push(await rpc(transport.batch, "the transport alone", 0));
    }
  } finally {
    await transport.close();
    cli.close();
  }
  const sqlS = percentile(sqlMs, 50) / 1000;
  /** A read's median, its rate, every run, and its rate against SQL's. */
  const figure = (ms: number[]) => {
    const s = percentile(ms, 50) / 1000;
    return {
      seconds: round(s, 3),
      lines_per_s: Math.round(n / s),
      runs_s: ms.map((x) => round(x / 1000, 3)),
      ratio_to_sql: round(sqlS / s, 3),
    };
  };
  return {
    requests: n,
    body_mib: round(bodyMiB, 1),
    build_s: round(buildS, 1),
    rounds: ROUNDS,
    ...figure(rpcMs),
    sql: {
      seconds: round(sqlS, 3),
      lines_per_s: Math.round(n / sqlS),
      runs_s: sqlMs.map((ms) => round(ms / 1000, 3)),
    },
    lines_per_message: RESULT_LINES_PER_MESSAGE,
    one_line_a_message: figure(singleMs),
    transport_only: figure(transportMs),
  };
}
