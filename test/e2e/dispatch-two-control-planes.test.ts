/**
 * Two control planes on one database — this test process and a second
 * `fusillade control-plane` process — with dispatcher processes split
 * between them: the limit is still global (DESIGN §3.3), because grants are
 * counted in Postgres under the model row's lock, not in either replica.
 */
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import { clients, startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import {
  createTestBatch,
  type FusilladeProcess,
  items,
  spawnFusillade,
  startDispatcherProcess,
  stateCounts,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

let t: TestControlPlane;
let other: FusilladeProcess | undefined;
let sql: pg.Pool;
let upstream: Upstream;
const children: FusilladeProcess[] = [];

beforeAll(async () => {
  t = await startTestControlPlane();
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  upstream = await startUpstream();
});
afterAll(async () => {
  await Promise.all(children.map((c) => c.stop("SIGKILL")));
  await other?.stop("SIGKILL");
  await upstream?.close();
  await sql?.end();
  await t?.close();
});

test("dispatchers split between two control-plane processes hold the global limit", async () => {
  other = spawnFusillade(
    ["control-plane", "--listen", "127.0.0.1:0", "--database-url", t.database.url],
    { FUSILLADE_LOG_LEVEL: "warn" },
  );
  const [, otherUrl] = await other.waitFor(/control plane listening on (http:\/\/\S+)/, 30_000);
  // Set through the other replica, read by both: limits live in the database.
  await clients(otherUrl!).admin.setModelLimit({ model: "G", limit: 8 });
  // b2 (on the other replica) starts alone and takes every slot: its first
  // requests are held at the upstream. a1 (on this replica) and b1 join
  // while it holds them, so every run goes through the hand-back between
  // replicas, not only those where b2 happened to Sync first.
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  upstream.respond = () => ({ after: gate, delayMs: 20 + Math.floor(Math.random() * 30) });
  children.push(await startDispatcherProcess({ controlPlane: otherUrl!, id: "b2", capacity: 8 }));
  const batchId = await createTestBatch(t.batch, upstream.url, items("G", 300));
  await upstream.until(() => upstream.gauge("G").current === 8, 30_000, "b2 running 8");
  children.push(
    ...(await Promise.all([
      startDispatcherProcess({ controlPlane: t.url, id: "a1", capacity: 8 }),
      startDispatcherProcess({ controlPlane: otherUrl!, id: "b1", capacity: 8 }),
    ])),
  );
  // Once all three want the model (each one's grant row, with a want, is in
  // the database), each one's target is a third of the limit. But b2 learns
  // its lower target only from its next Sync (every 2 s while it runs
  // requests), so the gate stays shut until every holder of slots has Synced
  // since all three wanted; from then on b2 hands slots back as the held
  // requests finish. Opened as soon as all three wanted, a 300-request batch
  // could end before b2 heard of the others (seen: 0, 0 and 300 acquired).
  await expect
    .poll(
      async () =>
        (
          await sql.query<{ holder: string }>(
            "SELECT holder FROM slot_grants WHERE model = 'G' AND want > 0 ORDER BY holder",
          )
        ).rows.map((r) => r.holder),
      { timeout: 30_000, interval: 50 },
    )
    .toEqual(["a1", "b1", "b2"]);
  const allWanted = (await sql.query<{ at: string }>("SELECT now()::text AS at")).rows[0]!.at;
  await expect
    .poll(
      async () =>
        (
          await sql.query<{ holder: string }>(
            `SELECT holder FROM slot_grants
              WHERE model = 'G' AND slots > 0 AND updated_at <= $1::timestamptz ORDER BY holder`,
            [allWanted],
          )
        ).rows.map((r) => r.holder),
      { timeout: 30_000, interval: 50 },
    )
    .toEqual([]);
  open();
  const status = await waitForBatch(t.batch, batchId);

  const g = upstream.gauge("G");
  console.log(
    `two control planes: peak in flight ${g.peak} (limit 8), ${upstream.deliveries.length} deliveries`,
  );
  expect(g.peak).toBeLessThanOrEqual(8);
  expect(g.peak).toBe(8);
  expect(Number(status.counts!.completed)).toBe(300);
  expect(await stateCounts(sql, batchId)).toEqual({ completed: 300 });
  expect(upstream.deliveries).toHaveLength(300);
  // Both replicas granted work: b2's hand-back reached the dispatcher of the
  // first and the other one of its own (a process's last log line, on
  // SIGTERM, carries its counters). Every one of them wanted the model
  // before any request ended, so each one's fair share was above zero.
  const acquired: number[] = [];
  for (const c of children) {
    expect((await c.stop("SIGTERM")).code).toBe(0);
    const line = c
      .stderr()
      .split("\n")
      .find((l) => l.includes('"msg":"dispatcher stopped"'));
    acquired.push(JSON.parse(line!).acquired);
  }
  console.log(`acquired by b2, a1, b1: ${acquired}`);
  expect(
    acquired.every((n) => n > 0),
    `acquired by b2, a1, b1: ${acquired}`,
  ).toBe(true);
});
