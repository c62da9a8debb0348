/**
 * GetBatchResults: OpenAI-format output and error lines for the requests
 * terminal so far, in line order; every key and its type checked. Then
 * batchResultLines, which reads them, when a page read ahead fails.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { batchResultLines, MAX_RESULT_LINES_PER_MESSAGE } from "../../src/api/streams.js";
import { ALL_TENANTS } from "../../src/auth/principal.js";
import { CONTROL_PLANE_DEFAULTS } from "../../src/config/config.js";
import {
  GetBatchResultsRequest_Kind,
  GetBatchResultsResponse_Kind,
} from "../../src/gen/fusillade/v1/batch_service_pb.js";
import type { Db } from "../../src/storage/db.js";
import { indexOrderedPage } from "../../src/storage/pages.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { poolQueries } from "../helpers/db.js";

let t: TestControlPlane;
let sql: pg.Pool;

beforeAll(async () => {
  t = await startTestControlPlane();
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
});

afterAll(async () => {
  await sql?.end();
  await t?.close();
});

async function makeBatch(n: number): Promise<string> {
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({
      custom_id: `c${i + 1}`,
      method: "POST",
      url: "/v1/chat/completions",
      body: { model: "gpt-x", messages: [] },
    }),
  );
  const { file } = await t.batch.createFile({
    endpoint: "http://127.0.0.1:9",
    jsonl: new TextEncoder().encode(lines.join("\n")),
  });
  return (await t.batch.createBatch({ fileId: file!.id })).batch!.id;
}

/** Sets columns of the request at `line` (a terminal state needs finished_at and its fields). */
async function set(batchId: string, line: number, assignments: string): Promise<void> {
  await sql.query(
    `UPDATE requests SET ${assignments}, updated_at = now() WHERE batch_id = $1 AND line = $2`,
    [batchId, line],
  );
}

async function results(batchId: string, kind = GetBatchResultsRequest_Kind.UNSPECIFIED) {
  const out: Array<{ kind: GetBatchResultsResponse_Kind; customId: string; line: unknown }> = [];
  for await (const m of t.batch.getBatchResults({ batchId, kind })) {
    expect(m.line).not.toMatch(/\n/);
    out.push({ kind: m.kind, customId: m.customId, line: JSON.parse(m.line) });
  }
  return out;
}

/** Asserts the exact key set and the JSON type of each key. */
function expectShape(value: unknown, shape: Record<string, string>): void {
  expect(value).toBeTypeOf("object");
  expect(value).not.toBeNull();
  const o = value as Record<string, unknown>;
  expect(Object.keys(o).sort()).toEqual(Object.keys(shape).sort());
  for (const [k, type] of Object.entries(shape)) {
    const v = o[k];
    const actual = v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
    expect(actual, k).toBe(type);
  }
}

describe("GetBatchResults", () => {
  it("streams OpenAI output and error lines for terminal requests, in line order", async () => {
    const id = await makeBatch(7);
    await set(
      id,
      1,
      `state = 'completed', finished_at = now(), response_status = 200,
       response_headers = '{"x-request-id":"req_up_1","content-type":"application/json"}',
       response_body = '{"id":"chatcmpl-1","choices":[]}'`,
    );
    await set(
      id,
      2,
      `state = 'completed', finished_at = now(), response_status = 200, response_body = 'not json'`,
    );
    await set(
      id,
      3,
      `state = 'failed', finished_at = now(), response_status = 400,
       response_body = '{"error":{"message":"bad request"}}', error_code = 'http_error',
       error_message = 'upstream answered 400'`,
    );
    await set(
      id,
      4,
      `state = 'failed', finished_at = now(), error_code = 'timeout',
       error_message = 'no response within 60s'`,
    );
    await set(
      id,
      5,
      `state = 'expired', finished_at = now(), error_code = 'batch_expired',
       error_message = 'the completion window closed'`,
    );
    await set(
      id,
      6,
      `state = 'canceled', finished_at = now(), error_code = 'batch_cancelled',
       error_message = 'the batch was cancelled'`,
    );
    // Line 7 is still pending: no line for it yet.

    const all = await results(id);
    expect(all.map((r) => [r.customId, r.kind])).toEqual([
      ["c1", GetBatchResultsResponse_Kind.OUTPUT],
      ["c2", GetBatchResultsResponse_Kind.OUTPUT],
      ["c3", GetBatchResultsResponse_Kind.ERROR],
      ["c4", GetBatchResultsResponse_Kind.ERROR],
      ["c5", GetBatchResultsResponse_Kind.ERROR],
      ["c6", GetBatchResultsResponse_Kind.ERROR],
    ]);
    const lines = all.map((r) => r.line as Record<string, Record<string, unknown>>);
    const { rows } = await sql.query<{ id: string; line: number }>(
      `SELECT id, line FROM requests WHERE batch_id = $1 ORDER BY line`,
      [id],
    );
    const ids = rows.map((r) => `batch_req_${r.id.replaceAll("-", "")}`);

    // Completed, JSON body: {"id","custom_id","response":{"status_code","request_id","body"},"error":null}
    expectShape(lines[0], { id: "string", custom_id: "string", response: "object", error: "null" });
    expectShape(lines[0]!.response, {
      status_code: "number",
      request_id: "string",
      body: "object",
    });
    expect(lines[0]).toEqual({
      id: ids[0],
      custom_id: "c1",
      response: {
        status_code: 200,
        request_id: "req_up_1",
        body: { id: "chatcmpl-1", choices: [] },
      },
      error: null,
    });
    expect(lines[0]!.id).toMatch(/^batch_req_[0-9a-f]{32}$/);

    // Completed, body not JSON: kept as a string; request_id falls back to ours.
    expectShape(lines[1]!.response, {
      status_code: "number",
      request_id: "string",
      body: "string",
    });
    expect(lines[1]!.response).toEqual({
      status_code: 200,
      request_id: rows[1]!.id,
      body: "not json",
    });

    // Failed with an upstream status: the response is kept next to the error.
    expectShape(lines[2], {
      id: "string",
      custom_id: "string",
      response: "object",
      error: "object",
    });
    expectShape(lines[2]!.error, { code: "string", message: "string" });
    expect(lines[2]).toEqual({
      id: ids[2],
      custom_id: "c3",
      response: {
        status_code: 400,
        request_id: rows[2]!.id,
        body: { error: { message: "bad request" } },
      },
      error: { code: "http_error", message: "upstream answered 400" },
    });

    // Failed without a response.
    expectShape(lines[3], { id: "string", custom_id: "string", response: "null", error: "object" });
    expect(lines[3]!.error).toEqual({ code: "timeout", message: "no response within 60s" });

    // Expired and cancelled.
    expectShape(lines[4], { id: "string", custom_id: "string", response: "null", error: "object" });
    expect(lines[4]!.error).toEqual({
      code: "batch_expired",
      message: "the completion window closed",
    });
    expect(lines[5]!.error!.code).toBe("batch_cancelled");

    // Kind filters.
    const outputs = await results(id, GetBatchResultsRequest_Kind.OUTPUT);
    expect(outputs.map((r) => r.customId)).toEqual(["c1", "c2"]);
    const errors = await results(id, GetBatchResultsRequest_Kind.ERRORS);
    expect(errors.map((r) => r.customId)).toEqual(["c3", "c4", "c5", "c6"]);
    expect((await results(id, GetBatchResultsRequest_Kind.ALL)).length).toBe(6);
  });

  it("pages through large batches in line order", async () => {
    const n = 1234;
    const id = await makeBatch(n);
    await sql.query(
      `UPDATE requests SET state = CASE WHEN line % 3 = 0 THEN 'failed' ELSE 'completed' END,
         finished_at = now(), updated_at = now(), response_status = 200,
         response_body = convert_to('{"n":' || line || '}', 'UTF8'),
         error_code = CASE WHEN line % 3 = 0 THEN 'http_error' END,
         error_message = CASE WHEN line % 3 = 0 THEN 'x' END
       WHERE batch_id = $1`,
      [id],
    );
    const all = await results(id);
    expect(all.map((r) => r.customId)).toEqual(Array.from({ length: n }, (_, i) => `c${i + 1}`));
    const outputs = await results(id, GetBatchResultsRequest_Kind.OUTPUT);
    expect(outputs).toHaveLength(n - Math.floor(n / 3));
  });

  it("keeps every line whole when bodies are hostile: NUL bytes, not UTF-8, pretty-printed, 20,000 levels deep", async () => {
    const id = await makeBatch(5);
    const deep = `${"[".repeat(20_000)}${"]".repeat(20_000)}`;
    const bodies: Array<[number, Buffer]> = [
      [1, Buffer.from('{"a":"x\u0000y"}')],
      [2, Buffer.from([0x7b, 0xff, 0x00, 0x7d])],
      [3, Buffer.from('{\n  "choices": [ 1, 2 ]\n}\n')],
      [4, Buffer.from(deep)],
    ];
    for (const [line, body] of bodies) {
      await sql.query(
        `UPDATE requests SET state = 'completed', finished_at = now(), updated_at = now(),
           response_status = 200, response_headers = '{}', response_body = $3
         WHERE batch_id = $1 AND line = $2`,
        [id, line, body],
      );
    }
    const lines = await results(id); // each line parsed on its own: none broke
    expect(lines.map((l) => l.customId)).toEqual(["c1", "c2", "c3", "c4"]);
    const body = (i: number) => (lines[i]!.line as { response: { body: unknown } }).response.body;
    expect(body(0)).toBe('{"a":"x\u0000y"}');
    expect(body(1)).toBe("{\uFFFD\u0000}");
    expect(body(2)).toEqual({ choices: [1, 2] });
    expect(body(3)).toBe(deep);
  });

  it("packs up to lines_per_message lines an answer: the same lines, in the same order", async () => {
    const n = 1203;
    const id = await makeBatch(n);
    await sql.query(
      `UPDATE requests SET state = 'completed', finished_at = now(), response_status = 200,
         response_body = '{"ok":true}', updated_at = now()
       WHERE batch_id = $1 AND line % 7 <> 0`,
      [id],
    );
    await sql.query(
      `UPDATE requests SET state = 'failed', finished_at = now(), error_code = 'timeout',
         error_message = 'no response within 60s', updated_at = now()
       WHERE batch_id = $1 AND line % 7 = 0`,
      [id],
    );
    const single: unknown[] = [];
    for await (const m of t.batch.getBatchResults({ batchId: id })) {
      expect(m.lines).toHaveLength(0);
      single.push([m.kind, m.customId, m.line]);
    }
    const packed: unknown[] = [];
    const sizes: number[] = [];
    for await (const m of t.batch.getBatchResults({ batchId: id, linesPerMessage: 100 })) {
      expect([m.kind, m.line, m.customId]).toEqual([
        GetBatchResultsResponse_Kind.UNSPECIFIED,
        "",
        "",
      ]);
      sizes.push(m.lines.length);
      for (const l of m.lines) packed.push([l.kind, l.customId, l.line]);
    }
    expect(single).toHaveLength(n);
    expect(packed).toEqual(single);
    expect(Math.max(...sizes)).toBe(100);
    expect(Math.min(...sizes)).toBeGreaterThan(0);
    // Pages of 500 rows: 100 + 100 + … a page, its remainder sent before the next page.
    expect(sizes.length).toBe(13);
  });

  it("ends an answer once its lines pass ~1 MiB of text, whatever lines_per_message asks", async () => {
    const n = 40; // 40 × ~60 KiB: one page (under its 3 MiB cap), three answers
    const id = await makeBatch(n);
    await sql.query(
      `UPDATE requests SET state = 'completed', finished_at = now(), response_status = 200,
         response_body = convert_to('{"pad":"' || repeat('x', 60000) || '"}', 'UTF8'),
         updated_at = now()
       WHERE batch_id = $1`,
      [id],
    );
    const answers: string[][] = [];
    const asked = { batchId: id, linesPerMessage: MAX_RESULT_LINES_PER_MESSAGE };
    for await (const m of t.batch.getBatchResults(asked)) answers.push(m.lines.map((l) => l.line));
    expect(answers.flat()).toHaveLength(n);
    expect(answers.length).toBeGreaterThan(1);
    for (const lines of answers) {
      // It ends with the line that passes the mark: the text before that line is under it.
      const before = lines.slice(0, -1).reduce((sum, l) => sum + l.length, 0);
      expect(before).toBeLessThan(1024 * 1024);
    }
  });

  it("rejects an unknown batch", async () => {
    const err = await results("00000000-0000-4000-8000-000000000000").catch((e) => e);
    expect(ConnectError.from(err).code).toBe(Code.NotFound);
  });
});

describe("indexOrderedPage", () => {
  it("plans a keyset page of a batch without statistics as an ordered index scan, no sort", async () => {
    const id = await makeBatch(3000); // just written: never analysed
    const plan = async (run: (text: string, params: unknown[]) => Promise<{ rows: unknown[] }>) =>
      (
        await run(
          `EXPLAIN SELECT id, line FROM requests
           WHERE batch_id = $1 AND state = ANY($2::text[]) AND line > $3 ORDER BY line LIMIT 501`,
          [id, ["pending", "completed"], 1000],
        )
      ).rows
        .map((r) => (r as { "QUERY PLAN": string })["QUERY PLAN"])
        .join("\n");
    const held = await plan((text, params) => indexOrderedPage(poolQueries(sql), text, params));
    expect(held).toMatch(/Index Scan using requests_batch_id_line_key/);
    expect(held).not.toMatch(/Sort|Bitmap/);
  });
});

describe("batchResultLines", () => {
  it("fails on a page read ahead that failed while the reader waited, and leaves no rejection unhandled", async () => {
    const n = 600; // two pages of 500 rows: the second is read while the first is consumed
    const id = await makeBatch(n);
    await sql.query(
      `UPDATE requests SET state = 'completed', finished_at = now(), updated_at = now(),
         response_status = 200, response_body = convert_to('{"n":' || line || '}', 'UTF8')
       WHERE batch_id = $1`,
      [id],
    );
    // The batch and the first page from Postgres; the second page's read fails at once.
    let queries = 0;
    const lost = new Error("connection lost");
    const real = poolQueries(sql);
    const db: Pick<Db, "query" | "tx"> = {
      query: ((text: string, params?: unknown[]) =>
        ++queries <= 2 ? real.query(text, params) : Promise.reject(lost)) as Db["query"],
      tx: (fn) => (++queries <= 2 ? real.tx(fn) : Promise.reject(lost)),
    };
    const deps = {
      db,
      shutdownSignal: new AbortController().signal,
      config: CONTROL_PLANE_DEFAULTS,
    };
    const pages = batchResultLines(
      deps,
      ALL_TENANTS,
      id,
      ["completed"],
      new AbortController().signal,
    );
    const first = await pages.next();
    expect(first.done).toBe(false);
    expect(first.value).toHaveLength(500);
    expect(queries).toBe(3); // the next page was asked for before this one was handed out
    // A turn of the event loop with the failure pending: an unhandled rejection fails the run.
    await new Promise((resolve) => setImmediate(resolve));
    await expect(pages.next()).rejects.toBe(lost);
  });
});
