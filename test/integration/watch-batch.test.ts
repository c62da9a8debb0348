/**
 * WatchBatch: the batch at once, then changes coalesced to one message per
 * min_interval, ending after the terminal state. Requests move with SQL.
 */
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WatchBatchResponse } from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { BatchState } from "../../src/gen/fusillade/v1/resources_pb.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

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
      custom_id: `r${i + 1}`,
      method: "POST",
      url: "/v1/x",
      body: { model: "m1", i },
    }),
  );
  const { file } = await t.batch.createFile({
    endpoint: "http://127.0.0.1:9",
    jsonl: new TextEncoder().encode(lines.join("\n")),
  });
  return (await t.batch.createBatch({ fileId: file!.id })).batch!.id;
}

/** Completes the request at `line` (in its own transaction: one event, one NOTIFY). */
async function complete(batchId: string, line: number): Promise<void> {
  await sql.query(
    `UPDATE requests SET state = 'completed', finished_at = now(), updated_at = now(),
       response_status = 200, response_body = '{}' WHERE batch_id = $1 AND line = $2`,
    [batchId, line],
  );
}

const ms = (n: number) =>
  create(DurationSchema, { seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1e6 });

interface Received {
  msg: WatchBatchResponse;
  at: number;
}

/** Consumes a WatchBatch stream; `first` resolves with the first message. */
function watch(batchId: string, minIntervalMs?: number) {
  const got: Received[] = [];
  let onFirst: () => void = () => undefined;
  const first = new Promise<void>((r) => {
    onFirst = r;
  });
  const waiters = new Set<() => void>();
  const done = (async () => {
    try {
      for await (const msg of t.batch.watchBatch({
        batchId,
        minInterval: minIntervalMs === undefined ? undefined : ms(minIntervalMs),
      })) {
        got.push({ msg, at: performance.now() });
        onFirst();
        for (const w of waiters) w();
      }
      return undefined;
    } catch (e) {
      onFirst();
      return e;
    }
  })();
  /** Resolves once a message's batch passes `pred`. */
  const until = (pred: (b: NonNullable<WatchBatchResponse["batch"]>) => boolean) =>
    new Promise<void>((resolve) => {
      const check = () => {
        if (got.some((g) => pred(g.msg.batch!))) {
          waiters.delete(check);
          resolve();
        }
      };
      waiters.add(check);
      check();
    });
  return { got, first, done, until };
}

describe("WatchBatch", () => {
  it("sends the batch at once, coalesces changes to one message per min_interval, ends when terminal", async () => {
    const n = 12;
    const id = await makeBatch(n);
    const interval = 400;
    const w = watch(id, interval);
    await w.first;
    expect(w.got[0]!.msg.batch).toMatchObject({ id, state: BatchState.IN_PROGRESS });
    expect(w.got[0]!.msg.batch!.counts!.pending).toBe(BigInt(n));
    // Three bursts of four separate transactions; each burst is awaited on the stream.
    for (let burst = 0; burst < 3; burst++) {
      for (let line = burst * 4 + 1; line <= burst * 4 + 4; line++) await complete(id, line);
      await w.until((b) => b.counts!.completed === BigInt(burst * 4 + 4));
    }
    expect(await w.done).toBeUndefined();

    const msgs = w.got.map((g) => g.msg.batch!);
    const last = msgs[msgs.length - 1]!;
    expect(last.state).toBe(BatchState.COMPLETED);
    expect(last.openaiStatus).toBe("completed");
    expect(last.counts).toMatchObject({ total: BigInt(n), completed: BigInt(n), pending: 0n });
    expect(last.completeTime).toBeDefined();
    // Coalesced: fewer messages than changes, at most one per interval. Counted over the
    // whole run rather than gap by gap: arrival times are this process's, and a stall here
    // delivers two messages back to back however far apart the server sent them (one
    // interval of slack covers a first message that arrived late).
    expect(msgs.length).toBeLessThan(n + 1);
    expect(msgs.length).toBeGreaterThanOrEqual(4);
    const span = w.got[w.got.length - 1]!.at - w.got[0]!.at;
    expect(w.got.length - 1).toBeLessThanOrEqual(Math.floor(span / interval) + 1);
    // Counts only grow, and every message is a consistent snapshot.
    for (const b of msgs) {
      const c = b.counts!;
      expect(c.pending + c.inProgress + c.completed + c.failed + c.canceled + c.expired).toBe(
        c.total,
      );
    }
    const done = msgs.map((b) => b.counts!.completed);
    expect([...done].sort((a, b) => Number(a - b))).toEqual(done);
  });

  it("sends one message and ends for a batch already terminal", async () => {
    const id = await makeBatch(2);
    await complete(id, 1);
    await complete(id, 2);
    const w = watch(id);
    expect(await w.done).toBeUndefined();
    expect(w.got).toHaveLength(1);
    expect(w.got[0]!.msg.batch!.state).toBe(BatchState.COMPLETED);
  });

  it("follows a cancel through cancelling to cancelled", async () => {
    const id = await makeBatch(2);
    // One request in flight: cancel leaves the batch cancelling until it ends.
    await sql.query(
      `UPDATE requests SET state = 'leased', attempt = 1, lease_token = nextval('lease_token_seq'),
         lease_holder = 'test', lease_expires_at = now() + interval '10 minutes', updated_at = now()
       WHERE batch_id = $1 AND line = 1`,
      [id],
    );
    const w = watch(id, 0);
    await w.first;
    await t.batch.cancelBatch({ batchId: id });
    await sql.query(
      `UPDATE requests SET state = 'canceled', lease_holder = NULL, lease_expires_at = NULL,
         lease_token = NULL, finished_at = now(), updated_at = now(), error_code = 'batch_cancelled',
         error_message = 'cancelled' WHERE batch_id = $1 AND line = 1`,
      [id],
    );
    expect(await w.done).toBeUndefined();
    const states = w.got.map((g) => g.msg.batch!.state);
    expect(states[0]).toBe(BatchState.IN_PROGRESS);
    expect(states[states.length - 1]).toBe(BatchState.CANCELLED);
    expect(w.got[w.got.length - 1]!.msg.batch!.cancelTime).toBeDefined();
  });

  it("rejects an unknown batch and a negative interval", async () => {
    const unknown = await watch("00000000-0000-4000-8000-000000000000").done;
    expect(ConnectError.from(unknown).code).toBe(Code.NotFound);
    const id = await makeBatch(1);
    const bad = await (async () => {
      try {
        for await (const _ of t.batch.watchBatch({
          batchId: id,
          minInterval: create(DurationSchema, { seconds: -1n }),
        })) {
          // no message is expected
        }
      } catch (e) {
        return e;
      }
    })();
    expect(ConnectError.from(bad).code).toBe(Code.InvalidArgument);
  });
});
