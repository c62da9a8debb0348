/**
 * Retention on a real database: a batch past its retention goes with every
 * row that referred to it (requests, events, its file and templates, stored
 * API keys); running and recently finished batches stay; a batch's own
 * retention wins over the server's; a finished batch's change log goes after
 * the events window and a stream resuming from a cursor into it gets the
 * final state; two replicas' passes never run at once; the worker runs by
 * itself and shows in /metrics.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  StreamBatchRequestsResponse_Kind as Kind,
  type StreamBatchRequestsResponse,
} from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { RequestState } from "../../src/gen/fusillade/v1/resources_pb.js";
import { Db } from "../../src/storage/db.js";
import { type RetentionSettings, retentionPass } from "../../src/storage/retention.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

const HOUR = 3600_000;
const POOL = { size: 3, acquireTimeoutMs: 10_000, statementTimeoutMs: 60_000 };
const enc = new TextEncoder();
let t: TestControlPlane;
let sql: pg.Pool;
let db: Db;

beforeAll(async () => {
  // The built-in worker looks once a minute at most: these tests run passes themselves.
  t = await startTestControlPlane({ retentionMs: 0, eventRetentionMs: 0 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 4 });
  db = await Db.connect(t.database.url, { general: { ...POOL, name: "retention-test" } });
});
afterAll(async () => {
  await db?.close();
  await sql?.end();
  await t?.close();
});

let seq = 0;
/** A file of `n` lines with an upstream API key; its id. */
async function fileOf(n: number): Promise<string> {
  const prefix = `r${++seq}`;
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({
      custom_id: `${prefix}-${i + 1}`,
      method: "POST",
      url: "/v1/x",
      body: { model: "m-retention", i },
    }),
  );
  const { file } = await t.batch.createFile({
    filename: `${prefix}.jsonl`,
    jsonl: enc.encode(lines.join("\n")),
    endpoint: "http://upstream.test",
    apiKey: `sk-test-key-${prefix}`,
  });
  return file!.id;
}

/** A batch of a new `n`-line file, cancelled at once (finished: every request canceled). */
async function finishedBatch(n: number, retention = ""): Promise<{ id: string; fileId: string }> {
  const fileId = await fileOf(n);
  const { batch } = await t.batch.createBatch({ fileId, retention });
  await t.batch.cancelBatch({ batchId: batch!.id });
  return { id: batch!.id, fileId };
}

/** Moves a batch's finish (and its file's upload) `ms` into the past. */
async function age(batch: { id: string; fileId: string }, ms: number): Promise<void> {
  await sql.query(
    `UPDATE batches SET finished_at = finished_at - $2 * interval '1 millisecond' WHERE id = $1`,
    [batch.id, ms],
  );
  await sql.query(
    `UPDATE files SET created_at = created_at - $2 * interval '1 millisecond' WHERE id = $1`,
    [batch.fileId, ms],
  );
}

/** Rows that refer to a batch or its file, per table. */
async function rowsOf(b: { id: string; fileId: string }): Promise<Record<string, number>> {
  const { rows } = await sql.query<Record<string, string>>(
    `SELECT (SELECT count(*) FROM batches WHERE id = $1) AS batches,
       (SELECT count(*) FROM requests WHERE batch_id = $1) AS requests,
       (SELECT count(*) FROM request_events WHERE batch_id = $1) AS events,
       (SELECT count(*) FROM files WHERE id = $2) AS files,
       (SELECT count(*) FROM request_templates WHERE file_id = $2) AS templates,
       (SELECT count(*) FROM api_keys WHERE file_id = $2) AS keys`,
    [b.id, b.fileId],
  );
  return Object.fromEntries(Object.entries(rows[0]!).map(([k, v]) => [k, Number(v)]));
}

const SETTINGS: RetentionSettings = { retentionMs: HOUR, eventRetentionMs: 0, chunkRows: 2 };

describe("retention pass", () => {
  test("a batch past retention goes with every row that referred to it; running and recent ones stay", async () => {
    const old = await finishedBatch(5);
    await age(old, 2 * HOUR);
    const recent = await finishedBatch(3);
    const runningFile = await fileOf(4);
    const { batch: running } = await t.batch.createBatch({ fileId: runningFile });
    await sql.query(`UPDATE files SET created_at = created_at - interval '2 hours' WHERE id = $1`, [
      runningFile,
    ]);
    const before = {
      recent: await rowsOf(recent),
      running: await rowsOf({ id: running!.id, fileId: runningFile }),
    };
    expect(await rowsOf(old)).toEqual({
      batches: 1,
      requests: 5,
      events: 5,
      files: 1,
      templates: 5,
      keys: 1,
    });

    const counts = await retentionPass(db, SETTINGS, { pace: () => 0 });
    expect(counts).toMatchObject({ batches: 1, requests: 5, events: 5, files: 1, templates: 5 });
    expect(await rowsOf(old)).toEqual({
      batches: 0,
      requests: 0,
      events: 0,
      files: 0,
      templates: 0,
      keys: 0,
    });
    // An old file with a running batch, and a recent batch: untouched.
    expect(await rowsOf(recent)).toEqual(before.recent);
    expect(await rowsOf({ id: running!.id, fileId: runningFile })).toEqual(before.running);
    // Nothing left to do: the next pass deletes nothing.
    expect(await retentionPass(db, SETTINGS)).toMatchObject({ batches: 0, requests: 0, files: 0 });
  });

  test("a batch's own retention wins over the server's; 0 keeps it", async () => {
    const short = await finishedBatch(2, "10s");
    const kept = await finishedBatch(2, "0");
    await age(short, 20_000);
    await age(kept, 100 * HOUR);
    const server = { ...SETTINGS, retentionMs: 30 * 24 * HOUR };
    await retentionPass(db, server);
    expect((await rowsOf(short)).batches).toBe(0);
    expect((await rowsOf(kept)).batches).toBe(1);
    // The kept batch's file has a batch left: it stays too.
    expect((await rowsOf(kept)).files).toBe(1);
    // delete_time says when a finished batch goes, and nothing for a kept one.
    const got = await t.batch.getBatch({ batchId: kept.id });
    expect(got.batch?.deleteTime).toBeUndefined();
  });

  test("delete_time is the finish time plus the retention", async () => {
    const b = await finishedBatch(1, "7d");
    const { batch } = await t.batch.getBatch({ batchId: b.id });
    const finish = Number(batch!.finishTime!.seconds);
    expect(Number(batch!.deleteTime!.seconds) - finish).toBe(7 * 24 * 3600);
  });

  test("a retention that is not a duration is INVALID_ARGUMENT naming the field, and creates nothing", async () => {
    const fileId = await fileOf(1);
    const e = await t.batch.createBatch({ fileId, retention: "a week" }).catch((x) => x);
    expect(e).toBeInstanceOf(ConnectError);
    expect((e as ConnectError).code).toBe(Code.InvalidArgument);
    expect((e as ConnectError).message).toContain("retention");
    const { rows } = await sql.query(`SELECT 1 FROM batches WHERE file_id = $1`, [fileId]);
    expect(rows).toHaveLength(0);
  });

  test("a batch being deleted cannot be retried; a file being deleted cannot start a batch", async () => {
    const b = await finishedBatch(2);
    await sql.query(`UPDATE batches SET purging_at = now() WHERE id = $1`, [b.id]);
    const retry = await t.batch.retryBatch({ batchId: b.id, resume: true }).catch((x) => x);
    expect((retry as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((await rowsOf(b)).requests).toBe(2);
    const fileId = await fileOf(1);
    await sql.query(`UPDATE files SET purging_at = now() WHERE id = $1`, [fileId]);
    const created = await t.batch.createBatch({ fileId }).catch((x) => x);
    expect((created as ConnectError).code).toBe(Code.NotFound);
    // A pass finishes what was marked, whatever the retention now says.
    expect(await retentionPass(db, { ...SETTINGS, retentionMs: 0 })).toMatchObject({
      batches: 1,
      requests: 2,
      files: 1,
    });
    expect(await rowsOf(b)).toMatchObject({ batches: 0, requests: 0 });
  });

  test("two replicas: one pass at a time, the other skips at once; every row deleted once", async () => {
    const batches = [await finishedBatch(6), await finishedBatch(6)];
    for (const b of batches) await age(b, 2 * HOUR);
    const other = await Db.connect(t.database.url, { general: { ...POOL, name: "replica-b" } });
    try {
      let chunked!: () => void;
      const firstChunk = new Promise<void>((resolve) => {
        chunked = resolve;
      });
      // Replica A rests 20 ms after each chunk: its pass is under way when B tries.
      const a = retentionPass(db, SETTINGS, {
        pace: () => {
          chunked();
          return 20;
        },
      });
      await firstChunk;
      const started = performance.now();
      const b = await retentionPass(other, SETTINGS);
      expect(b).toBeUndefined();
      expect(performance.now() - started).toBeLessThan(1000);
      const counts = await a;
      expect(counts).toMatchObject({ batches: 2, requests: 12, events: 12 });
      for (const x of batches) expect((await rowsOf(x)).batches).toBe(0);
      // Once A is done, B's pass runs (and finds nothing).
      expect(await retentionPass(other, SETTINGS)).toMatchObject({ batches: 0, requests: 0 });
    } finally {
      await other.close();
    }
  });
});

/** Every message of a stream resumed from `cursor`, to its end. */
async function streamFrom(batchId: string, cursor: string): Promise<StreamBatchRequestsResponse[]> {
  const out: StreamBatchRequestsResponse[] = [];
  for await (const m of t.batch.streamBatchRequests({ batchId, cursor })) out.push(m);
  return out;
}

describe("the change log of a finished batch", () => {
  test("goes after the events window; a stream resuming from a cursor into it gets the final state", async () => {
    const fileId = await fileOf(4);
    const { batch } = await t.batch.createBatch({ fileId });
    const id = batch!.id;
    // A client read the snapshot while the batch ran, then went away.
    const ac = new AbortController();
    let cursor = "";
    for await (const m of t.batch.streamBatchRequests({ batchId: id }, { signal: ac.signal })) {
      cursor = m.cursor;
      if (m.kind === Kind.SNAPSHOT_END) break;
    }
    ac.abort();
    await t.batch.cancelBatch({ batchId: id });
    await age({ id, fileId }, 2 * HOUR);
    const counts = await retentionPass(db, { retentionMs: 0, eventRetentionMs: HOUR });
    // Older tests' finished batches lose their events too; this one's 4 are among them.
    expect(counts).toMatchObject({ requests: 0, batches: 0 });
    expect(counts?.events).toBeGreaterThanOrEqual(4);
    expect(await rowsOf({ id, fileId })).toMatchObject({ batches: 1, requests: 4, events: 0 });

    const resumed = await streamFrom(id, cursor);
    const snapshot = resumed.filter((m) => m.kind === Kind.SNAPSHOT);
    expect(snapshot.map((m) => m.request?.line)).toEqual([1, 2, 3, 4]);
    expect(snapshot.every((m) => m.request?.state === RequestState.CANCELED)).toBe(true);
    expect(resumed[resumed.length - 1]?.kind).toBe(Kind.SNAPSHOT_END);
  });
});

describe("the worker", () => {
  let r: TestControlPlane;
  beforeAll(async () => {
    // Retention of 1 s: the worker looks every second.
    r = await startTestControlPlane({ retentionMs: 1000 }, t.database);
  });
  afterAll(async () => {
    await r?.stop();
  });

  test("deletes a finished batch by itself and counts it in /metrics", async () => {
    const b = await finishedBatch(3);
    // Await the deletion: the batch's NOT_FOUND (each look is one read).
    for (;;) {
      const gone = await r.batch.getBatch({ batchId: b.id }).then(
        () => false,
        (e: ConnectError) => e.code === Code.NotFound,
      );
      if (gone) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(await rowsOf(b)).toMatchObject({ batches: 0, requests: 0, events: 0 });
    const text = await r.cp.metrics.text();
    expect(text).toMatch(/fusillade_retention_deleted_rows_total\{kind="batches"\} [1-9]/);
    expect(text).toMatch(/fusillade_retention_passes_total\{outcome="done"\} [1-9]/);
  });
});
