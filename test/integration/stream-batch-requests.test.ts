/**
 * StreamBatchRequests against a real control plane and Postgres: snapshot
 * then changes, resuming from cursors (mid-snapshot and mid-changes), many
 * subscribers, replicas, filters, shutdown. Requests are moved with SQL, so
 * the trigger emits events and NOTIFYs exactly as the lease code does.
 */

import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  StreamBatchRequestsResponse_Kind as Kind,
  type StreamBatchRequestsRequestSchema,
  type StreamBatchRequestsResponse,
} from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { BatchState, RequestState } from "../../src/gen/fusillade/v1/resources_pb.js";
import { clients, startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

type BatchClient = TestControlPlane["batch"];
type Msg = StreamBatchRequestsResponse;
type Req = MessageInitShape<typeof StreamBatchRequestsRequestSchema>;

let t: TestControlPlane;
let sql: pg.Pool;

beforeAll(async () => {
  t = await startTestControlPlane();
  sql = new pg.Pool({ connectionString: t.database.url, max: 4 });
});

afterAll(async () => {
  await sql?.end();
  await t?.close();
});

/** A batch of `n` requests (custom ids r1…rn), created through `client`. */
async function makeBatch(client: BatchClient, n: number): Promise<string> {
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({
      custom_id: `r${i + 1}`,
      method: "POST",
      url: "/v1/chat/completions",
      body: { model: "m1", messages: [{ role: "user", content: `hi ${i + 1}` }] },
    }),
  );
  const { file } = await client.createFile({
    filename: "t.jsonl",
    endpoint: "http://127.0.0.1:9",
    jsonl: new TextEncoder().encode(`${lines.join("\n")}\n`),
  });
  const { batch } = await client.createBatch({ fileId: file!.id });
  return batch!.id;
}

const LEASE = `state = 'leased', attempt = attempt + 1, lease_token = nextval('lease_token_seq'),
  lease_holder = 'test', lease_expires_at = now() + interval '10 minutes', not_before = NULL,
  updated_at = now()`;
const UNLEASE = `lease_holder = NULL, lease_expires_at = NULL, lease_token = NULL, not_before = NULL,
  updated_at = now()`;

/** Moves the batch's requests at `lines` to a state, as the lease code would. */
async function move(
  batchId: string,
  lines: number[],
  to: "leased" | "completed" | "failed" | "expired" | "pending",
): Promise<void> {
  const set = {
    leased: LEASE,
    completed: `state = 'completed', ${UNLEASE}, finished_at = now(), response_status = 200,
      response_headers = '{"x-request-id":"up-1"}', response_body = convert_to('{"ok":true,"line":' || line || '}', 'UTF8')`,
    failed: `state = 'failed', ${UNLEASE}, finished_at = now(), response_status = 400,
      response_body = 'bad', error_code = 'http_error', error_message = 'upstream said 400'`,
    expired: `state = 'expired', ${UNLEASE}, finished_at = now(), error_code = 'batch_expired',
      error_message = 'window closed'`,
    pending: `state = 'pending', lease_holder = NULL, lease_expires_at = NULL, lease_token = NULL,
      not_before = now() + interval '1 second', updated_at = now()`,
  }[to];
  await sql.query(`UPDATE requests SET ${set} WHERE batch_id = $1 AND line = ANY($2::int[])`, [
    batchId,
    lines,
  ]);
}

const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** A stream consumed in the background; tests await conditions on what arrived. */
interface Subscriber {
  msgs: Msg[];
  /** Resolves once `pred(msgs)` holds; rejects if the stream ends first. */
  until(pred: (msgs: Msg[]) => boolean): Promise<void>;
  /** Settles when the stream ends: undefined, or the error. */
  done: Promise<unknown>;
  abort(): void;
}

function subscribe(client: BatchClient, req: Req): Subscriber {
  const ac = new AbortController();
  const msgs: Msg[] = [];
  const waiters = new Set<() => void>();
  let ended = false;
  const wakeAll = () => {
    for (const w of waiters) w();
  };
  const done = (async () => {
    try {
      for await (const m of client.streamBatchRequests(req, { signal: ac.signal })) {
        msgs.push(m);
        wakeAll();
      }
      return undefined;
    } catch (e) {
      return e;
    } finally {
      ended = true;
      wakeAll();
    }
  })();
  return {
    msgs,
    done,
    abort: () => ac.abort(),
    until: (pred) =>
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (pred(msgs)) {
            waiters.delete(check);
            resolve();
          } else if (ended) {
            waiters.delete(check);
            reject(new Error(`stream ended after ${msgs.length} messages without the condition`));
          }
        };
        waiters.add(check);
        check();
      }),
  };
}

/** Reads exactly `n` messages (or to the end), then drops the connection. */
async function takeThenDrop(client: BatchClient, req: Req, n: number): Promise<Msg[]> {
  const ac = new AbortController();
  const it = client.streamBatchRequests(req, { signal: ac.signal })[Symbol.asyncIterator]();
  const got: Msg[] = [];
  while (got.length < n) {
    const next = await it.next();
    if (next.done) return got;
    got.push(next.value);
  }
  ac.abort();
  await it.return?.().catch(() => undefined);
  return got;
}

const snapshotEnd = (m: Msg[]) => m.some((x) => x.kind === Kind.SNAPSHOT_END);
const changes = (m: Msg[]) => m.filter((x) => x.kind === Kind.CHANGE);
/** A message in comparable form (timestamps vary only by when it was read). */
const view = (m: Msg) => ({
  kind: m.kind,
  line: m.request?.line,
  state: m.request?.state,
  attempt: m.request?.attempt,
  cursor: m.cursor,
  batchState: m.batchState,
});

describe("StreamBatchRequests", () => {
  it("sends the snapshot in line order, then live changes, and ends when the batch is terminal", async () => {
    const id = await makeBatch(t.batch, 5);
    await move(id, [3], "leased");
    const s = subscribe(t.batch, { batchId: id });
    await s.until(snapshotEnd);
    expect(s.msgs.map((m) => [m.kind, m.request?.line, m.request?.state])).toEqual([
      [Kind.SNAPSHOT, 1, RequestState.PENDING],
      [Kind.SNAPSHOT, 2, RequestState.PENDING],
      [Kind.SNAPSHOT, 3, RequestState.LEASED],
      [Kind.SNAPSHOT, 4, RequestState.PENDING],
      [Kind.SNAPSHOT, 5, RequestState.PENDING],
      [Kind.SNAPSHOT_END, undefined, undefined],
    ]);
    expect(s.msgs[0]!.request!.customId).toBe("r1");
    expect(s.msgs.every((m) => m.batchState === BatchState.IN_PROGRESS)).toBe(true);

    await move(id, [1, 2], "leased");
    await s.until((m) => changes(m).length === 2);
    await move(id, [3], "completed");
    await s.until((m) => changes(m).length === 3);
    const done = changes(s.msgs)[2]!;
    expect(done.request).toMatchObject({
      line: 3,
      customId: "r3",
      model: "m1",
      state: RequestState.COMPLETED,
      attempt: 1,
      response: { statusCode: 200, body: '{"ok":true,"line":3}' },
    });
    expect(done.request!.finishTime).toBeDefined();

    await move(id, [1, 2], "completed");
    await move(id, [4, 5], "leased");
    await move(id, [4], "failed");
    await move(id, [5], "expired");
    expect(await s.done).toBeUndefined();
    const cs = changes(s.msgs);
    // In log order (within one statement the trigger orders events by request id).
    // (The first logged change, line 3 leased, came before the snapshot.)
    expect(cs.map((m) => [m.request!.line, m.request!.state])).toEqual((await logOf(id)).slice(1));
    expect(cs.map((m) => `${m.request!.line}:${RequestState[m.request!.state]}`).sort()).toEqual(
      ["1:LEASED", "2:LEASED", "3:COMPLETED", "1:COMPLETED", "2:COMPLETED", "4:LEASED", "5:LEASED"]
        .concat(["4:FAILED", "5:EXPIRED"])
        .sort(),
    );
    const failed = cs.find((m) => m.request!.state === RequestState.FAILED)!;
    expect(failed.request!.error).toMatchObject({
      code: "http_error",
      message: "upstream said 400",
    });
    expect(failed.request!.response?.statusCode).toBe(400);
    // The last change carries the batch's final state; the ones before it did not.
    // (COMPLETED, not EXPIRED: the batch's window had not closed.)
    expect(cs[8]!.batchState).toBe(BatchState.COMPLETED);
    expect(cs.slice(0, 8).every((m) => m.batchState === BatchState.IN_PROGRESS)).toBe(true);
  });

  it("builds a change from its event, not from the request as it is now", async () => {
    const id = await makeBatch(t.batch, 1);
    await move(id, [1], "leased");
    await move(id, [1], "pending");
    await move(id, [1], "leased");
    await move(id, [1], "completed");
    // A subscriber that starts from the beginning of the change log.
    const s = subscribe(t.batch, { batchId: id, cursor: cursorAtSeq(id, 0) });
    expect(await s.done).toBeUndefined();
    expect(
      s.msgs.map((m) => [m.request!.state, m.request!.attempt, !!m.request!.response]),
    ).toEqual([
      [RequestState.LEASED, 1, false],
      [RequestState.PENDING, 1, false],
      [RequestState.LEASED, 2, false],
      [RequestState.COMPLETED, 2, true],
    ]);
  });

  it("a resumed stream equals an uninterrupted one, dropped anywhere", async () => {
    const id = await makeBatch(t.batch, 6);
    const whole = subscribe(t.batch, { batchId: id });
    await whole.until(snapshotEnd);

    // Drop mid-snapshot, at its end and right after it, before any change.
    const got: Msg[] = [];
    let cursor = "";
    for (const n of [2, 3, 2]) {
      const part = await takeThenDrop(t.batch, { batchId: id, cursor }, n);
      got.push(...part);
      cursor = part[part.length - 1]!.cursor;
    }
    expect(got.map(view)).toEqual(whole.msgs.map(view));

    // Drop mid-changes; changes keep coming while it is away.
    await move(id, [1, 2, 3], "leased");
    await whole.until((m) => changes(m).length === 3);
    const part = await takeThenDrop(t.batch, { batchId: id, cursor }, 2);
    got.push(...part);
    cursor = part[part.length - 1]!.cursor;
    await move(id, [1, 2], "completed");
    await move(id, [3], "pending");
    await move(id, [3, 4, 5, 6], "leased");
    await move(id, [3, 4, 5, 6], "completed");
    const rest = subscribe(t.batch, { batchId: id, cursor });
    expect(await rest.done).toBeUndefined();
    expect(await whole.done).toBeUndefined();
    got.push(...rest.msgs);
    expect(got.map(view)).toEqual(whole.msgs.map(view));
    expect(changes(got)).toHaveLength(3 + 2 + 1 + 4 + 4);
    // Resuming from the very last cursor of a finished batch sends nothing.
    const after = subscribe(t.batch, { batchId: id, cursor: got[got.length - 1]!.cursor });
    expect(await after.done).toBeUndefined();
    expect(after.msgs).toEqual([]);
  });

  it("resumes mid-snapshot across pages with changes in between: nothing missed or repeated", async () => {
    const n = 1200; // three snapshot pages
    const id = await makeBatch(t.batch, n);
    const whole = subscribe(t.batch, { batchId: id });
    await whole.until(snapshotEnd);

    const got: Msg[] = [];
    let cursor = "";
    // Phase 1: read into the second page, drop; change requests on both sides of the cut.
    const part1 = await takeThenDrop(t.batch, { batchId: id }, 600);
    got.push(...part1);
    cursor = part1[part1.length - 1]!.cursor;
    await move(id, [...range(1, 10), ...range(700, 710), 1100], "leased");
    await move(id, [5, 705], "completed");
    // Phase 2: read a little (catch-up changes, then snapshot rows), drop again.
    const part2 = await takeThenDrop(t.batch, { batchId: id, cursor }, 30);
    got.push(...part2);
    cursor = part2[part2.length - 1]!.cursor;
    await move(id, [1, 2, 1100, 1200], "completed");
    // Phase 3: to the end.
    await sql.query(`UPDATE requests SET ${LEASE} WHERE batch_id = $1 AND state = 'pending'`, [id]);
    await sql.query(
      `UPDATE requests SET state = 'completed', lease_holder = NULL, lease_expires_at = NULL,
         lease_token = NULL, finished_at = now(), updated_at = now(), response_status = 200,
         response_body = '{}' WHERE batch_id = $1 AND state <> 'completed'`,
      [id],
    );
    const rest = subscribe(t.batch, { batchId: id, cursor });
    expect(await rest.done).toBeUndefined();
    expect(await whole.done).toBeUndefined();
    got.push(...rest.msgs);

    // Every request is in the snapshot exactly once, in line order.
    const snaps = got.filter((m) => m.kind === Kind.SNAPSHOT);
    expect(snaps.map((m) => m.request!.line)).toEqual(range(1, n));
    expect(got.filter((m) => m.kind === Kind.SNAPSHOT_END)).toHaveLength(1);
    // No change is sent twice, and changes come in log order.
    const seqs = changes(got).map((m) => seqOf(m.cursor));
    expect(new Set(seqs).size).toBe(seqs.length);
    expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
    // Per request: its snapshot state is a point in the uninterrupted history,
    // and the changes after it are exactly the rest of that history.
    const history = perRequest(whole.msgs);
    const resumed = perRequest(got);
    expect(resumed.size).toBe(n);
    for (const [line, states] of resumed) {
      const full = history.get(line)!;
      const start = full.length - states.length;
      expect(start, `line ${line}`).toBeGreaterThanOrEqual(0);
      expect(states, `line ${line}`).toEqual(full.slice(start));
    }
    // The cut was real: some changes came before the snapshot ended.
    const endAt = got.findIndex((m) => m.kind === Kind.SNAPSHOT_END);
    expect(changes(got.slice(0, endAt)).length).toBeGreaterThan(0);
  });

  it("200 concurrent subscribers each receive every change, in order", async () => {
    const id = await makeBatch(t.batch, 20);
    // Several HTTP/2 connections, as 200 separate clients would have.
    const conns = Array.from({ length: 4 }, () => clients(t.url).batch);
    const subs = Array.from({ length: 200 }, (_, i) => subscribe(conns[i % 4]!, { batchId: id }));
    await Promise.all(subs.map((s) => s.until(snapshotEnd)));
    await move(id, range(1, 20), "leased");
    await move(id, range(1, 10), "completed");
    for (const line of range(11, 20)) await move(id, [line], "failed");
    const results = await Promise.all(subs.map((s) => s.done));
    expect(results.every((r) => r === undefined)).toBe(true);
    const { rows } = await sql.query<{ seq: string; line: number; state: string }>(
      `SELECT e.seq, r.line, e.state FROM request_events e JOIN requests r ON r.id = e.request_id
       WHERE e.batch_id = $1 ORDER BY e.seq`,
      [id],
    );
    expect(rows).toHaveLength(40);
    const expected = rows.map((r) => [Number(r.seq), r.line, r.state]);
    const stateName = (s: RequestState) => RequestState[s].toLowerCase();
    for (const s of subs) {
      expect(
        changes(s.msgs).map((m) => [seqOf(m.cursor), m.request!.line, stateName(m.request!.state)]),
      ).toEqual(expected);
    }
  });

  it("a subscriber on one replica sees changes written through another", async () => {
    const b = await startTestControlPlane({}, t.database);
    try {
      const id = await makeBatch(b.batch, 4);
      const s = subscribe(t.batch, { batchId: id });
      await s.until(snapshotEnd);
      await b.batch.cancelBatch({ batchId: id });
      expect(await s.done).toBeUndefined();
      const cs = changes(s.msgs);
      expect(cs.map((m) => [m.request!.line, m.request!.state])).toEqual(await logOf(id));
      expect(cs.every((m) => m.request!.state === RequestState.CANCELED)).toBe(true);
      expect(cs).toHaveLength(4);
      expect(cs[3]!.batchState).toBe(BatchState.CANCELLED);
      expect(cs[0]!.request!.error?.code).toBe("batch_cancelled");
    } finally {
      await b.stop();
    }
  });

  it("filters by state: the snapshot by current state, changes by the state entered", async () => {
    const id = await makeBatch(t.batch, 4);
    await move(id, [1, 2], "leased");
    await move(id, [1], "completed");
    const states = [RequestState.COMPLETED, RequestState.FAILED];
    const s = subscribe(t.batch, { batchId: id, states });
    await s.until(snapshotEnd);
    expect(s.msgs.map((m) => [m.kind, m.request?.line])).toEqual([
      [Kind.SNAPSHOT, 1],
      [Kind.SNAPSHOT_END, undefined],
    ]);
    await move(id, [3, 4], "leased");
    await move(id, [2, 3], "completed");
    await move(id, [4], "failed");
    expect(await s.done).toBeUndefined();
    const entered = changes(s.msgs).map((m) => [m.request!.line, m.request!.state]);
    expect(entered).toEqual(
      (await logOf(id)).filter(([, st]) => st !== RequestState.LEASED).slice(1), // line 1 was in the snapshot
    );
    expect(entered).toHaveLength(3);
    // A cursor is bound to its filter.
    const err = await subscribe(t.batch, { batchId: id, cursor: s.msgs[0]!.cursor }).done;
    expect(ConnectError.from(err).code).toBe(Code.InvalidArgument);
  });

  it("rejects unknown batches and foreign or malformed cursors", async () => {
    const unknown = await subscribe(t.batch, {
      batchId: "00000000-0000-4000-8000-000000000000",
    }).done;
    expect(ConnectError.from(unknown).code).toBe(Code.NotFound);
    const a = await makeBatch(t.batch, 1);
    const b = await makeBatch(t.batch, 1);
    const first = await takeThenDrop(t.batch, { batchId: a }, 1);
    const foreign = await subscribe(t.batch, { batchId: b, cursor: first[0]!.cursor }).done;
    expect(ConnectError.from(foreign).code).toBe(Code.InvalidArgument);
    const junk = await subscribe(t.batch, { batchId: a, cursor: "not-a-cursor" }).done;
    expect(ConnectError.from(junk).code).toBe(Code.InvalidArgument);
  });

  it("ends open streams with UNAVAILABLE when the server shuts down", async () => {
    const b = await startTestControlPlane({}, t.database);
    const id = await makeBatch(b.batch, 2);
    const s = subscribe(b.batch, { batchId: id });
    await s.until(snapshotEnd);
    await b.stop();
    const err = await s.done;
    expect(ConnectError.from(err).code).toBe(Code.Unavailable);
    // Resuming elsewhere from the last cursor picks up where it stopped.
    const last = s.msgs[s.msgs.length - 1]!.cursor;
    await move(id, [1, 2], "leased");
    await move(id, [1, 2], "completed");
    const rest = subscribe(t.batch, { batchId: id, cursor: last });
    expect(await rest.done).toBeUndefined();
    expect(changes(rest.msgs)).toHaveLength(4);
  });
});

/** The change sequence number inside a cursor (tests may look inside; clients must not). */
function seqOf(cursor: string): number {
  return (JSON.parse(Buffer.from(cursor, "base64url").toString()) as { s: number }).s;
}

/** A cursor for the change phase at `seq` (as the server would encode it, unfiltered). */
function cursorAtSeq(batchId: string, seq: number): string {
  return Buffer.from(JSON.stringify({ v: 1, b: batchId, f: "", p: "c", s: seq })).toString(
    "base64url",
  );
}

/** The batch's change log as [line, proto state], in seq order. */
async function logOf(batchId: string): Promise<Array<[number, RequestState]>> {
  const { rows } = await sql.query<{ line: number; state: string }>(
    `SELECT r.line, e.state FROM request_events e JOIN requests r ON r.id = e.request_id
     WHERE e.batch_id = $1 ORDER BY e.seq`,
    [batchId],
  );
  return rows.map((r) => [
    r.line,
    RequestState[r.state.toUpperCase() as keyof typeof RequestState] as RequestState,
  ]);
}

/** Each request's states as the stream told them: its snapshot state, then its changes. */
function perRequest(msgs: Msg[]): Map<number, Array<[RequestState, number]>> {
  const out = new Map<number, Array<[RequestState, number]>>();
  for (const m of msgs) {
    if (!m.request) continue;
    const list = out.get(m.request.line) ?? [];
    list.push([m.request.state, m.request.attempt]);
    out.set(m.request.line, list);
  }
  return out;
}
