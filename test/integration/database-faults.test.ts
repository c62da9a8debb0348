/**
 * The control plane's database connections under faults: the LISTEN
 * connection comes back after its backend is killed or its socket goes
 * silent, and the lease path keeps working while client traffic holds every
 * connection of the general pool.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Notifications, WORK_CHANNEL } from "../../src/storage/notifications.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { useTestDatabase } from "../helpers/db.js";
import { createTestBatch, items } from "../helpers/dispatcher-process.js";
import { startTcpProxy, type TcpProxy } from "../helpers/tcp-proxy.js";

const database = useTestDatabase();
let sql: pg.Pool;

beforeAll(() => {
  sql = new pg.Pool({ connectionString: database.url, max: 2 });
});
afterAll(async () => {
  await sql?.end();
});

/** Resolves with the first payload on `channel` that passes `accept`; rejects after `ms`. */
function next(
  n: Notifications,
  accept: (payload: string) => boolean,
  ms: number,
  what: string,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${what} within ${ms} ms`));
    }, ms);
    const off = n.on(WORK_CHANNEL, (p) => {
      if (!accept(p)) return;
      clearTimeout(timer);
      off();
      resolve(p);
    });
  });
}

/** NOTIFY fusillade_work with `payload`, from another connection. */
async function notify(payload: string): Promise<void> {
  await sql.query("SELECT pg_notify($1, $2)", [WORK_CHANNEL, payload]);
}

describe("the LISTEN connection", () => {
  let n: Notifications | undefined;
  let proxy: TcpProxy | undefined;
  afterEach(async () => {
    await n?.close();
    await proxy?.close();
    n = undefined;
    proxy = undefined;
  });

  it("is re-established after its backend is terminated, wakes everyone once, and hears NOTIFY again", async () => {
    n = new Notifications(database.url, { checkIntervalMs: 200 });
    await n.start();
    const heard = next(n, (p) => p === "before", 5000, "NOTIFY before the kill");
    await notify("before");
    await heard;

    const wakes: string[] = [];
    n.on(WORK_CHANNEL, (p) => {
      if (p === "*") wakes.push(p);
    });
    const reconnected = next(n, (p) => p === "*", 10_000, "wake after the reconnect");
    const killed = await sql.query<{ ok: boolean }>(
      `SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
       WHERE application_name = 'fusillade-listen' AND datname = current_database()`,
    );
    expect(killed.rows).toEqual([{ ok: true }]);
    await reconnected;

    const after = next(n, (p) => p === "after", 5000, "NOTIFY after the reconnect");
    await notify("after");
    await after;
    expect(wakes).toEqual(["*"]);
  });

  it("is re-established when its socket goes silent (no error, no end)", async () => {
    const target = new URL(database.url);
    proxy = await startTcpProxy(target.hostname, Number(target.port));
    n = new Notifications(proxy.via(database.url), { checkIntervalMs: 200 });
    await n.start();
    const heard = next(n, (p) => p === "before", 5000, "NOTIFY before the freeze");
    await notify("before");
    await heard;

    const reconnected = next(n, (p) => p === "*", 10_000, "wake after the reconnect");
    proxy.freeze();
    await reconnected;
    const after = next(n, (p) => p === "after", 5000, "NOTIFY after the reconnect");
    await notify("after");
    await after;
  });
});

describe("the lease path's own pool", () => {
  let t: TestControlPlane | undefined;
  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  it("grants slots and claims while every general-pool connection is held by other work", async () => {
    t = await startTestControlPlane({ dbPoolSize: 2, dbAcquireTimeoutMs: 500 });
    await createTestBatch(t.batch, "http://127.0.0.1:9", items("pool-m", 2));
    const general = t.cp.db.pool;
    const held = await Promise.all(
      Array.from({ length: general.options.max }, () => general.connect()),
    );
    try {
      // Client traffic waits for a connection, and gets UNAVAILABLE after the acquire timeout…
      const listed = await t.batch.listBatches({}).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(listed?.code).toBe(Code.Unavailable);
      // …while the lease path runs on its own connections.
      const first = await t.dispatch.sync(
        { dispatcherId: "pool-test", slots: [{ model: "pool-m", token: 0n, want: 2 }] },
        { timeoutMs: 5000 },
      );
      expect(first.grants[0]?.slots).toBe(2);
      const res = await t.dispatch.sync(
        {
          dispatcherId: "pool-test",
          slots: [{ model: "pool-m", token: first.grants[0]!.token, keep: 2, want: 2, room: 2 }],
        },
        { timeoutMs: 5000 },
      );
      expect(res.claims).toHaveLength(2);
    } finally {
      for (const c of held) c.release();
    }
  });
});
