/**
 * `fusillade serve`'s dispatcher thread calls its control plane over a
 * MessagePort (docs/architecture.md, "serve's two threads"): a batch runs end
 * to end while the process holds no TCP connection to its own port (read from
 * /proc: the process's sockets whose peer is that port); and on SIGTERM the
 * dispatcher stops first, so the reports of the requests it was running and
 * its slot hand-back land before the control plane closes.
 */
import { readdir, readFile, readlink } from "node:fs/promises";
import pg from "pg";
import { afterAll, afterEach, beforeAll, expect, test } from "vitest";
import { clients } from "../helpers/control-plane.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import {
  createTestBatch,
  type FusilladeProcess,
  items,
  spawnFusillade,
  stateCounts,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

let db: TestDatabase;
let sql: pg.Pool;
let upstream: Upstream;
let serve: FusilladeProcess | undefined;

beforeAll(async () => {
  db = await createTestDatabase();
  sql = new pg.Pool({ connectionString: db.url, max: 2 });
  upstream = await startUpstream();
});
afterEach(async () => {
  await serve?.stop("SIGKILL");
  serve = undefined;
});
afterAll(async () => {
  await sql?.end();
  await upstream?.close();
  await db?.drop();
});

/** Starts `serve` on the test database (limit 3); its URL. */
async function startServe(): Promise<string> {
  serve = spawnFusillade(
    ["serve", "--listen", "127.0.0.1:0", "--default-limit", "3", "--capacity", "8"],
    { FUSILLADE_LOG_LEVEL: "warn", DATABASE_URL: db.url },
  );
  const [, url] = await serve.waitFor(/serving on (http:\/\/\S+)/, 60_000);
  return url!;
}

/** Established TCP connections of process `pid` whose peer is port `port` (from /proc). */
async function connectionsTo(pid: number, port: number): Promise<number> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [])) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) inodes.add(m[1]!);
  }
  let n = 0;
  for (const table of ["tcp", "tcp6"]) {
    const text = await readFile(`/proc/${pid}/net/${table}`, "utf8").catch(() => "");
    for (const line of text.split("\n").slice(1)) {
      // sl local_address rem_address st … inode (the 10th field)
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] !== "01") continue;
      const peerPort = Number.parseInt(f[2]!.split(":")[1]!, 16);
      if (peerPort === port && inodes.has(f[9]!)) n++;
    }
  }
  return n;
}

test("serve runs a batch with no connection from its process to its own port", async () => {
  upstream.respond = () => ({ delayMs: 40 });
  const url = await startServe();
  const own = Number(new URL(url).port);
  const upstreamPort = Number(new URL(upstream.url).port);
  const { batch } = clients(url);
  const batchId = await createTestBatch(batch, upstream.url, items("P", 60));
  // Sample while the batch runs: the dispatcher thread's sockets are the process's.
  let toSelf = 0;
  let toUpstream = 0;
  let running = true;
  const sampler = (async () => {
    while (running) {
      toSelf = Math.max(toSelf, await connectionsTo(serve!.pid, own));
      toUpstream = Math.max(toUpstream, await connectionsTo(serve!.pid, upstreamPort));
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const status = await waitForBatch(batch, batchId, 60_000);
  running = false;
  await sampler;
  expect(Number(status.counts!.completed)).toBe(60);
  expect(new Set(upstream.deliveries.map((d) => d.customId)).size).toBe(60);
  // The reading works: the same process's connections to the upstream are seen.
  expect(toUpstream).toBeGreaterThan(0);
  expect(toSelf).toBe(0);
});

test("SIGTERM: the running requests' reports and the slot hand-back land before the control plane closes", async () => {
  upstream.deliveries.length = 0;
  let open: () => void = () => undefined;
  const gate = new Promise<void>((r) => {
    open = r;
  });
  upstream.respond = () => ({ after: gate });
  const url = await startServe();
  const batchId = await createTestBatch(clients(url).batch, upstream.url, items("S", 10));
  await upstream.until(() => upstream.gauge("S").current === 3, 30_000, "3 requests in flight");
  const exited = serve!.stop("SIGTERM");
  // The stop is under way (nothing new starts, buffered claims go back); then the three
  // running requests are answered, within the shutdown grace.
  await new Promise((r) => setTimeout(r, 500));
  open();
  expect(await exited).toEqual({ code: 0, signal: null });
  serve = undefined;

  const answered = upstream.deliveries.length;
  expect(answered).toBeGreaterThanOrEqual(3);
  expect(answered).toBeLessThan(10);
  // Every request the upstream answered is recorded; the rest are pending with their
  // attempt given back (released unsent); nothing is left claimed; no slot is held.
  expect(await stateCounts(sql, batchId)).toEqual({ completed: answered, pending: 10 - answered });
  const attempts = await sql.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM requests WHERE batch_id = $1 AND state = 'pending' AND attempt <> 0",
    [batchId],
  );
  expect(attempts.rows[0]!.n).toBe(0);
  const grants = await sql.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM slot_grants WHERE model = 'S'",
  );
  expect(grants.rows[0]!.n).toBe(0);
});
