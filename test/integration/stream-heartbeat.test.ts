/**
 * Server streams send heartbeats while their batch is quiet (FUSILLADE_STREAM_HEARTBEAT,
 * src/api/streams.ts), so meshes and load balancers that close idle streams keep a quiet
 * batch's watchers: WatchBatch sends the batch again, StreamBatchRequests a HEARTBEAT
 * message with the cursor it is at. A batch no dispatcher runs stays quiet for ever: every
 * message after the first ones is a heartbeat.
 */
import { afterAll, beforeAll, expect, test } from "vitest";
import { parseAllowList } from "../../src/domain/endpoints.js";
import { StreamBatchRequestsResponse_Kind as Kind } from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

const ENDPOINT = "http://127.0.0.1:9";
/** The heartbeat of this control plane (the default is 30 s). */
const HEARTBEAT_MS = 300;

let t: TestControlPlane;
let batchId: string;

beforeAll(async () => {
  t = await startTestControlPlane({
    streamHeartbeatMs: HEARTBEAT_MS,
    allowedEndpoints: parseAllowList(ENDPOINT, "test"),
  });
  const { file } = await t.batch.createFile({
    endpoint: ENDPOINT,
    jsonl: new TextEncoder().encode(
      JSON.stringify({ custom_id: "a", method: "POST", url: "/v1/x", body: { model: "quiet" } }),
    ),
  });
  batchId = (await t.batch.createBatch({ fileId: file!.id })).batch!.id;
});

afterAll(async () => {
  await t?.close();
});

test("WatchBatch sends the unchanged batch again after a quiet heartbeat period", async () => {
  const abort = new AbortController();
  const seen: Array<{ at: number; pending: bigint }> = [];
  try {
    for await (const m of t.batch.watchBatch({ batchId }, { signal: abort.signal })) {
      seen.push({ at: performance.now(), pending: m.batch!.counts!.pending });
      if (seen.length === 3) break;
    }
  } finally {
    abort.abort();
  }
  // Nothing changed: the same batch each time, a heartbeat period apart at least.
  expect(seen.map((s) => s.pending)).toEqual([1n, 1n, 1n]);
  for (let i = 1; i < seen.length; i++) {
    expect(seen[i]!.at - seen[i - 1]!.at).toBeGreaterThanOrEqual(HEARTBEAT_MS - 20);
  }
});

test("StreamBatchRequests sends HEARTBEAT messages after its snapshot, with the cursor it is at", async () => {
  const abort = new AbortController();
  const kinds: Kind[] = [];
  const cursors: string[] = [];
  const requests: boolean[] = [];
  try {
    for await (const m of t.batch.streamBatchRequests({ batchId }, { signal: abort.signal })) {
      kinds.push(m.kind);
      cursors.push(m.cursor);
      requests.push(m.request !== undefined);
      if (kinds.length === 4) break;
    }
  } finally {
    abort.abort();
  }
  expect(kinds).toEqual([Kind.SNAPSHOT, Kind.SNAPSHOT_END, Kind.HEARTBEAT, Kind.HEARTBEAT]);
  expect(requests).toEqual([true, false, false, false]);
  // A heartbeat resumes where the stream is: after the snapshot.
  expect(cursors[2]).toBe(cursors[1]);
  expect(cursors[3]).toBe(cursors[1]);
});
