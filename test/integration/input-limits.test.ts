/**
 * Inputs that used to end as INTERNAL, run unbounded, or not run at all:
 * UploadFile past its size or line cap, model names too long for NOTIFY
 * payloads and index entries, retry durations that overflow their columns,
 * and pages of requests whose bodies add up to more than a page should hold.
 */
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StreamBatchRequestsResponse_Kind as Kind } from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { encodeStreamCursor } from "../../src/storage/events.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

const ENDPOINT = "http://127.0.0.1:9";
const MAX_UPLOAD_BYTES = 4096;
const MAX_UPLOAD_LINES = 5;
const MAX_PAGE_BYTES = 2500;
const enc = new TextEncoder();

let t: TestControlPlane;
let sql: pg.Pool;

beforeAll(async () => {
  t = await startTestControlPlane({
    maxUploadBytes: MAX_UPLOAD_BYTES,
    maxUploadLines: MAX_UPLOAD_LINES,
    maxPageBytes: MAX_PAGE_BYTES,
  });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
});
afterAll(async () => {
  await sql?.end();
  await t?.close();
});

function line(i: number, model = "m"): string {
  return JSON.stringify({ custom_id: `c${i}`, method: "POST", url: "/v1/x", body: { model } });
}

function jsonl(n: number, model?: string): string {
  return Array.from({ length: n }, (_, i) => line(i + 1, model)).join("\n");
}

async function* uploadMessages(text: string, chunk = 1000) {
  yield { part: { case: "header" as const, value: { endpoint: ENDPOINT } } };
  const bytes = enc.encode(text);
  for (let i = 0; i < bytes.length; i += chunk) {
    yield { part: { case: "chunk" as const, value: bytes.subarray(i, i + chunk) } };
  }
}

async function rejection(p: Promise<unknown>): Promise<ConnectError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e, "the call should have failed").toBeInstanceOf(ConnectError);
  return e as ConnectError;
}

async function fileCount(): Promise<number> {
  const { rows } = await sql.query<{ n: number }>("SELECT count(*)::int AS n FROM files");
  return rows[0]!.n;
}

describe("UploadFile caps", () => {
  it("refuses content past the byte cap with RESOURCE_EXHAUSTED naming the cap and its setting", async () => {
    const before = await fileCount();
    // 3 lines with long custom ids: under the line cap, over the byte cap.
    const text = [1, 2, 3]
      .map((i) =>
        JSON.stringify({
          custom_id: `c${i}`,
          method: "POST",
          url: "/v1/x",
          body: { model: "m", prompt: "x".repeat(2000) },
        }),
      )
      .join("\n");
    const e = await rejection(t.batch.uploadFile(uploadMessages(text)));
    expect(e.code, e.rawMessage).toBe(Code.ResourceExhausted);
    expect(e.rawMessage).toContain(String(MAX_UPLOAD_BYTES));
    expect(e.rawMessage).toContain("FUSILLADE_MAX_UPLOAD_BYTES");
    expect(await fileCount()).toBe(before);
  });

  it("refuses more lines than the line cap with RESOURCE_EXHAUSTED naming the cap and its setting", async () => {
    const before = await fileCount();
    const e = await rejection(t.batch.uploadFile(uploadMessages(jsonl(MAX_UPLOAD_LINES + 1))));
    expect(e.code, e.rawMessage).toBe(Code.ResourceExhausted);
    expect(e.rawMessage).toContain(String(MAX_UPLOAD_LINES));
    expect(e.rawMessage).toContain("FUSILLADE_MAX_UPLOAD_LINES");
    expect(await fileCount()).toBe(before);
    // At the caps exactly: accepted.
    const ok = await t.batch.uploadFile(uploadMessages(jsonl(MAX_UPLOAD_LINES)));
    expect(ok.file?.templateCount).toBe(BigInt(MAX_UPLOAD_LINES));
  });
});

describe("model names", () => {
  it("longer than 200 bytes are INVALID_ARGUMENT naming the line and the field, at validation", async () => {
    const before = await fileCount();
    const long = "m".repeat(201);
    const text = [line(1), line(2, long)].join("\n");
    const e = await rejection(t.batch.createFile({ endpoint: ENDPOINT, jsonl: enc.encode(text) }));
    expect(e.code, e.rawMessage).toBe(Code.InvalidArgument);
    expect(e.rawMessage).toContain("line 2");
    expect(e.rawMessage).toContain("body.model");
    expect(e.rawMessage).toContain("200");
    expect(await fileCount()).toBe(before);
    // 200 bytes (100 two-byte characters) is fine.
    const ok = await t.batch.createFile({
      endpoint: ENDPOINT,
      jsonl: enc.encode(line(1, "é".repeat(100))),
    });
    expect(ok.file?.templateCount).toBe(1n);
  });

  it("longer than 200 bytes are refused by SetModelLimit", async () => {
    const e = await rejection(t.admin.setModelLimit({ model: "m".repeat(201), limit: 3 }));
    expect(e.code, e.rawMessage).toBe(Code.InvalidArgument);
    expect(e.rawMessage).toContain("model");
  });
});

describe("CreateBatch retry policy", () => {
  it("refuses backoffs that overflow their columns with INVALID_ARGUMENT naming the field", async () => {
    const { file } = await t.batch.createFile({ endpoint: ENDPOINT, jsonl: enc.encode(jsonl(1)) });
    const tooLong = durationFromMs(2 ** 31 * 1000); // ~68 years, in ms far past int4
    const e1 = await rejection(
      t.batch.createBatch({
        fileId: file!.id,
        retryPolicy: { initialBackoff: tooLong, maxBackoff: tooLong },
      }),
    );
    expect(e1.code, e1.rawMessage).toBe(Code.InvalidArgument);
    expect(e1.rawMessage).toContain("retry_policy.initial_backoff");
    const e2 = await rejection(
      t.batch.createBatch({
        fileId: file!.id,
        retryPolicy: { initialBackoff: durationFromMs(1000), maxBackoff: tooLong },
      }),
    );
    expect(e2.code, e2.rawMessage).toBe(Code.InvalidArgument);
    expect(e2.rawMessage).toContain("retry_policy.max_backoff");
    const { rows } = await sql.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM batches WHERE file_id = $1",
      [file!.id],
    );
    expect(rows[0]!.n).toBe(0);
  });
});

describe("pages capped by bytes", () => {
  /** A finished batch of `n` requests, each with a response body of `bodyBytes`. */
  async function finishedBatch(n: number, bodyBytes: number): Promise<string> {
    const { file } = await t.batch.createFile({ endpoint: ENDPOINT, jsonl: enc.encode(jsonl(n)) });
    const id = (await t.batch.createBatch({ fileId: file!.id })).batch!.id;
    await sql.query(
      `UPDATE requests SET state = 'completed', finished_at = now(), updated_at = now(),
         response_status = 200, response_body = convert_to(repeat('b', $2), 'UTF8')
       WHERE batch_id = $1`,
      [id, bodyBytes],
    );
    return id;
  }

  it("ListBatchRequests answers fewer rows and a next page token when the bodies pass the cap", async () => {
    const id = await finishedBatch(5, 1000);
    const pages: number[][] = [];
    let pageToken = "";
    do {
      const res = await t.batch.listBatchRequests({ batchId: id, pageSize: 100, pageToken });
      pages.push(res.requests.map((r) => r.line));
      pageToken = res.nextPageToken;
    } while (pageToken !== "" && pages.length < 10);
    // 2 × 1000 bytes fit in 2500; a third would not.
    expect(pages).toEqual([[1, 2], [3, 4], [5]]);
  });

  it("ListBatchRequests answers a row larger than the cap alone, and moves on", async () => {
    const id = await finishedBatch(2, MAX_PAGE_BYTES + 1);
    const first = await t.batch.listBatchRequests({ batchId: id, pageSize: 100 });
    expect(first.requests.map((r) => r.line)).toEqual([1]);
    const second = await t.batch.listBatchRequests({
      batchId: id,
      pageSize: 100,
      pageToken: first.nextPageToken,
    });
    expect(second.requests.map((r) => r.line)).toEqual([2]);
    expect(second.nextPageToken).toBe("");
  });

  it("StreamBatchRequests sends every request once, in order, through byte-capped snapshot and change pages", async () => {
    const id = await finishedBatch(5, 1000);
    const snapshot: Array<[Kind, number | undefined]> = [];
    for await (const m of t.batch.streamBatchRequests({ batchId: id })) {
      snapshot.push([m.kind, m.request?.line]);
    }
    expect(snapshot).toEqual([
      [Kind.SNAPSHOT, 1],
      [Kind.SNAPSHOT, 2],
      [Kind.SNAPSHOT, 3],
      [Kind.SNAPSHOT, 4],
      [Kind.SNAPSHOT, 5],
      [Kind.SNAPSHOT_END, undefined],
    ]);
    // From the start of the change log: every change, the completions with their bodies.
    const cursor = encodeStreamCursor({ phase: "changes", seq: 0 }, id, []);
    const completed: number[] = [];
    for await (const m of t.batch.streamBatchRequests({ batchId: id, cursor })) {
      expect(m.kind).toBe(Kind.CHANGE);
      const r = m.request;
      if (r !== undefined && (r.response?.body.length ?? 0) > 0) completed.push(r.line);
    }
    // In change order (the order the update touched the rows): each line once.
    expect(completed.sort()).toEqual([1, 2, 3, 4, 5]);
  });
});
