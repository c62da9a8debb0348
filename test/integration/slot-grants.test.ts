/**
 * Slot grants through the API (docs/capacity-leases.md), with test code acting
 * as dispatchers: the limit across holders and replicas, fair shares and
 * hand-backs, token checks, and limit changes. Grants live 60 s here, so none
 * expires during a test.
 */
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { SlotGrant, SyncResponse } from "../../src/gen/fusillade/v1/dispatch_service_pb.js";
import { clients, startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

let t: TestControlPlane;
let sql: pg.Pool;

beforeAll(async () => {
  t = await startTestControlPlane({ leaseTtlMs: 60_000, reapIntervalMs: 100, defaultLimit: 10 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
});
afterAll(async () => {
  await sql?.end();
  await t?.close();
});

/**
 * A WaitForWork that is to be woken by a change: long, so that an answer well before it
 * (POLL_MS / 2) can only be the wake-up, however slow the machine.
 */
const POLL_MS = 20_000;
/**
 * How long a waiting call is watched to see that nothing wakes it: a wrong wake-up comes
 * within milliseconds (the call looks at once, and on every notification), so this only
 * needs to outlast a few round trips; a slow machine makes it miss a wrong wake-up, never
 * report a wrong one.
 */
const QUIET_MS = 300;

const ms = (n: number) =>
  create(DurationSchema, { seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1e6 });

/** A batch of `n` requests of `model` (pending work, so WaitForWork has something to name). */
async function batchOf(model: string, n: number) {
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({
      custom_id: `${model}-${i}`,
      method: "POST",
      url: "/v1/x",
      body: { model, i },
    }),
  ).join("\n");
  const file = await t.batch.createFile({
    jsonl: new TextEncoder().encode(lines),
    endpoint: "http://127.0.0.1:9",
  });
  return (await t.batch.createBatch({ fileId: file.file!.id })).batch!;
}

interface Ask {
  token?: bigint;
  keep?: number;
  want: number;
}

/** One Sync of one model by `holder`; no claims asked for (room 0). */
async function sync(holder: string, model: string, ask: Ask, client = t.dispatch) {
  return client.sync({
    dispatcherId: holder,
    slots: [{ model, token: ask.token ?? 0n, keep: ask.keep ?? 0, want: ask.want, room: 0 }],
  });
}

function grantOf(res: SyncResponse, model: string): SlotGrant {
  const g = res.grants.find((x) => x.model === model);
  if (!g) throw new Error(`no grant of ${model} in ${JSON.stringify(res.lostGrants)}`);
  return g;
}

/** The unexpired grants of `model` in the database, by holder. */
async function rows(model: string) {
  const r = await sql.query<{ holder: string; token: string; slots: number; want: number }>(
    `SELECT holder, token, slots, want, expires_at FROM slot_grants
     WHERE model = $1 AND expires_at > now() ORDER BY holder`,
    [model],
  );
  return r.rows;
}

async function slotsHeld(model: string): Promise<number> {
  return (await rows(model)).reduce((n, r) => n + r.slots, 0);
}

/** Resolves to "waiting" if `p` has not settled within `withinMs`. */
async function settledWithin<T>(p: Promise<T>, withinMs: number): Promise<T | "waiting"> {
  return Promise.race([p, new Promise<"waiting">((r) => setTimeout(() => r("waiting"), withinMs))]);
}

describe("the limit across holders", () => {
  test("a lone holder gets min(want, limit); the default limit applies without a set one", async () => {
    await t.admin.setModelLimit({ model: "solo", limit: 6 });
    const a = grantOf(await sync("solo-a", "solo", { want: 4 }), "solo");
    expect(a).toMatchObject({ slots: 4, target: 4 });
    const b = grantOf(await sync("solo-a", "solo", { token: a.token, keep: 4, want: 50 }), "solo");
    expect(b).toMatchObject({ token: a.token, slots: 6, target: 6 });
    expect(await rows("solo")).toMatchObject([{ holder: "solo-a", slots: 6, want: 50 }]);

    await batchOf("deflt", 1); // its model_limits row, at the default (10)
    expect(grantOf(await sync("solo-a", "deflt", { want: 500 }), "deflt")).toMatchObject({
      slots: 10,
      target: 10,
    });
    // A model nobody has heard of (no limit row): nothing to grant.
    const none = await sync("solo-a", "never-seen", { want: 5 });
    expect(none.grants).toHaveLength(0);
  });

  test("concurrent new holders on two replicas never hold more than the limit, then converge to fair shares", async () => {
    const other = await startTestControlPlane({ leaseTtlMs: 60_000 }, t.database);
    try {
      await t.admin.setModelLimit({ model: "many", limit: 12 });
      const c2 = clients(other.url).dispatch;
      const holders = ["many-0", "many-1", "many-2", "many-3", "many-4"];
      const clientOf = (i: number) => (i % 2 ? c2 : t.dispatch);
      const first = await Promise.all(
        holders.map((h, i) => sync(h, "many", { want: 100 }, clientOf(i))),
      );
      let grants = first.map((r) => grantOf(r, "many"));
      // The first to lock the row was alone: it got the whole limit; the rest got nothing yet.
      expect(grants.reduce((n, g) => n + g.slots, 0)).toBe(12);
      expect(await slotsHeld("many")).toBe(12);
      const db = await rows("many");
      expect(db.map((r) => r.slots)).toEqual(grants.map((g) => g.slots));

      // Rounds of concurrent Syncs, each holder keeping min(slots, target) as a dispatcher
      // with nothing running does: never over the limit, and stable after a few rounds.
      for (let round = 0; round < 5; round++) {
        const res = await Promise.all(
          holders.map((h, i) => {
            const g = grants[i]!;
            const keep = Math.min(g.slots, g.target);
            return sync(h, "many", { token: g.token, keep, want: 100 }, clientOf(i));
          }),
        );
        grants = res.map((r) => grantOf(r, "many"));
        expect(grants.reduce((n, g) => n + g.slots, 0)).toBeLessThanOrEqual(12);
        expect(await slotsHeld("many")).toBeLessThanOrEqual(12);
      }
      // 12 over 5 equal wants: 2 each, the remainder (2) to the two lowest names.
      expect(grants.map((g) => g.target)).toEqual([3, 3, 2, 2, 2]);
      expect(grants.map((g) => g.slots)).toEqual([3, 3, 2, 2, 2]);
      expect(await slotsHeld("many")).toBe(12);
    } finally {
      await other.stop();
    }
  });
});

describe("fair shares", () => {
  test("a newcomer gets a target of half; the holder hands back through keep; the newcomer grows and is woken", async () => {
    await t.admin.setModelLimit({ model: "fs", limit: 10 });
    await batchOf("fs", 30);
    const a0 = grantOf(await sync("fs-a", "fs", { want: 100 }), "fs");
    expect(a0).toMatchObject({ slots: 10, target: 10 });
    const b0 = grantOf(await sync("fs-b", "fs", { want: 100 }), "fs");
    expect(b0).toMatchObject({ slots: 0, target: 5 });
    expect(await rows("fs")).toMatchObject([
      { holder: "fs-a", slots: 10 },
      { holder: "fs-b", slots: 0, want: 100 },
    ]);

    // B waits to grow; no slot is free.
    const started = Date.now();
    const woken = t.dispatch.waitForWork({
      dispatcherId: "fs-b",
      grow: ["fs"],
      known: ["fs"],
      wait: ms(POLL_MS),
    });
    // A still runs 10: its target drops to 5, but its slots are not cut below keep.
    const a1 = grantOf(await sync("fs-a", "fs", { token: a0.token, keep: 10, want: 100 }), "fs");
    expect(a1).toMatchObject({ slots: 10, target: 5 });
    expect(await settledWithin(woken, QUIET_MS)).toBe("waiting");
    // A hands back: keep = its target.
    const a2 = grantOf(await sync("fs-a", "fs", { token: a0.token, keep: 5, want: 100 }), "fs");
    expect(a2).toMatchObject({ slots: 5, target: 5 });
    expect((await woken).models).toEqual(["fs"]);
    expect(Date.now() - started).toBeLessThan(POLL_MS / 2);
    const b1 = grantOf(await sync("fs-b", "fs", { token: b0.token, keep: 0, want: 100 }), "fs");
    expect(b1).toMatchObject({ token: b0.token, slots: 5, target: 5 });
    expect(await slotsHeld("fs")).toBe(10);
  });

  test("water filling: small wants are met, the rest is split, the remainder goes to the lowest names", async () => {
    await t.admin.setModelLimit({ model: "wf", limit: 10 });
    const c = grantOf(await sync("wf-c", "wf", { want: 1 }), "wf");
    const a = grantOf(await sync("wf-a", "wf", { want: 100 }), "wf");
    expect(a).toMatchObject({ slots: 9, target: 9 });
    const b = grantOf(await sync("wf-b", "wf", { want: 100 }), "wf");
    // 10: c wants 1; 9 left for two: 5 to wf-a (lower name), 4 to wf-b.
    expect(b).toMatchObject({ slots: 0, target: 4 });
    const a1 = grantOf(await sync("wf-a", "wf", { token: a.token, keep: 9, want: 100 }), "wf");
    expect(a1).toMatchObject({ slots: 9, target: 5 });
    const a2 = grantOf(await sync("wf-a", "wf", { token: a.token, keep: 5, want: 100 }), "wf");
    expect(a2).toMatchObject({ slots: 5, target: 5 });
    const b1 = grantOf(await sync("wf-b", "wf", { token: b.token, want: 100 }), "wf");
    expect(b1).toMatchObject({ slots: 4, target: 4 });
    const c1 = grantOf(await sync("wf-c", "wf", { token: c.token, keep: 1, want: 1 }), "wf");
    expect(c1).toMatchObject({ slots: 1, target: 1 });
    expect(await slotsHeld("wf")).toBe(10);
  });

  test.each([
    {
      limit: 10,
      wants: { "q-z": 100, "q-m": 100, "q-a": 100 },
      targets: { "q-a": 4, "q-m": 3, "q-z": 3 },
    },
    {
      limit: 11,
      wants: { "q-d": 2, "q-c": 3, "q-b": 100, "q-a": 100 },
      targets: { "q-d": 2, "q-c": 3, "q-b": 3, "q-a": 3 },
    },
    {
      limit: 11,
      wants: { "q-a": 1, "q-b": 100, "q-c": 100 },
      targets: { "q-a": 1, "q-b": 5, "q-c": 5 },
    },
    { limit: 10, wants: { "q-a": 2, "q-b": 3 }, targets: { "q-a": 2, "q-b": 3 } },
    {
      limit: 7,
      wants: { "q-a": 100, "q-b": 4, "q-c": 0 },
      targets: { "q-a": 4, "q-b": 3, "q-c": 0 },
    },
  ])("targets for limit $limit and wants $wants", async ({ limit, wants, targets }) => {
    const model = `wf-${limit}-${Object.values(wants).join("-")}`;
    await t.admin.setModelLimit({ model, limit });
    const tokens = new Map<string, bigint>();
    for (const [h, want] of Object.entries(wants)) {
      const res = await sync(h, model, { want });
      tokens.set(h, res.grants[0]?.token ?? 0n);
    }
    // Every want is on record now: each holder's next Sync answers its share.
    const got: Record<string, number> = {};
    for (const [h, want] of Object.entries(wants)) {
      const res = await sync(h, model, { token: tokens.get(h)!, keep: 0, want });
      got[h] = res.grants[0]?.target ?? 0;
    }
    expect(got).toEqual(targets);
    const sumWants = Object.values(wants).reduce((n, w) => n + w, 0);
    const sumTargets = Object.values(got).reduce((n, x) => n + x, 0);
    expect(sumTargets).toBe(Math.min(limit, sumWants));
  });
});

describe("tokens", () => {
  test("a stale or unknown token is answered lost and changes nothing; token 0 resets the grant", async () => {
    await t.admin.setModelLimit({ model: "tk", limit: 4 });
    const g1 = grantOf(await sync("tk-a", "tk", { want: 4 }), "tk");
    expect(g1.slots).toBe(4);
    // Token 0 again (the dispatcher lost track of its grant): a new token, not a second grant.
    const g2 = grantOf(await sync("tk-a", "tk", { want: 4 }), "tk");
    expect(g2.token).toBeGreaterThan(g1.token);
    expect(g2.slots).toBe(4);
    expect(await slotsHeld("tk")).toBe(4);
    const before = await sql.query("SELECT * FROM slot_grants WHERE model = 'tk'");
    for (const token of [g1.token, g2.token + 1000n]) {
      const res = await sync("tk-a", "tk", { token, keep: 0, want: 0 });
      expect(res.grants).toHaveLength(0);
      expect(res.lostGrants).toMatchObject([{ model: "tk", token }]);
    }
    const stale = await sync("tk-a", "tk", { token: g1.token, keep: 9, want: 99 });
    expect(stale.lostGrants).toHaveLength(1);
    expect((await sql.query("SELECT * FROM slot_grants WHERE model = 'tk'")).rows).toEqual(
      before.rows,
    );
    // Another holder's token is not ours either.
    const other = await sync("tk-b", "tk", { token: g2.token, keep: 0, want: 1 });
    expect(other.lostGrants).toMatchObject([{ model: "tk", token: g2.token }]);
    expect(await rows("tk")).toMatchObject([{ holder: "tk-a", slots: 4 }]);
  });

  test("keep 0 and want 0 deletes the row and frees its slots", async () => {
    await t.admin.setModelLimit({ model: "tk0", limit: 3 });
    const a = grantOf(await sync("tk0-a", "tk0", { want: 3 }), "tk0");
    expect(grantOf(await sync("tk0-b", "tk0", { want: 3 }), "tk0").slots).toBe(0);
    const gone = await sync("tk0-a", "tk0", { token: a.token, keep: 0, want: 0 });
    expect(gone.grants).toHaveLength(0);
    expect(gone.lostGrants).toHaveLength(0);
    expect((await rows("tk0")).map((r) => r.holder)).toEqual(["tk0-b"]);
    const b = await sync("tk0-b", "tk0", { want: 3 });
    expect(grantOf(b, "tk0")).toMatchObject({ slots: 3, target: 3 });
    // Its token is gone with the row.
    expect((await sync("tk0-a", "tk0", { token: a.token, want: 1 })).lostGrants).toHaveLength(1);
  });
});

describe("limit changes", () => {
  test("lowering a limit lowers the target at the next Sync; slots go only as keep drops", async () => {
    await t.admin.setModelLimit({ model: "lo", limit: 4 });
    const a = grantOf(await sync("lo-a", "lo", { want: 10 }), "lo");
    expect(a).toMatchObject({ slots: 4, target: 4 });
    await t.admin.setModelLimit({ model: "lo", limit: 2 });
    const a1 = grantOf(await sync("lo-a", "lo", { token: a.token, keep: 4, want: 10 }), "lo");
    expect(a1).toMatchObject({ slots: 4, target: 2 });
    // A newcomer's share is counted at once, but no slot is free while A is above the limit.
    const b = grantOf(await sync("lo-b", "lo", { want: 10 }), "lo");
    expect(b).toMatchObject({ slots: 0, target: 1 });
    expect(await slotsHeld("lo")).toBe(4);
    const a2 = grantOf(await sync("lo-a", "lo", { token: a.token, keep: 2, want: 10 }), "lo");
    expect(a2).toMatchObject({ slots: 2, target: 1 });
    expect(grantOf(await sync("lo-b", "lo", { token: b.token, want: 10 }), "lo").slots).toBe(0);
    const a3 = grantOf(await sync("lo-a", "lo", { token: a.token, keep: 1, want: 10 }), "lo");
    expect(a3).toMatchObject({ slots: 1, target: 1 });
    const b1 = grantOf(await sync("lo-b", "lo", { token: b.token, want: 10 }), "lo");
    expect(b1).toMatchObject({ slots: 1, target: 1 });
    expect(await slotsHeld("lo")).toBe(2);
  });

  test("raising a limit wakes a WaitForWork call waiting to grow, well before its wait", async () => {
    await t.admin.setModelLimit({ model: "hi", limit: 2 });
    await batchOf("hi", 10);
    grantOf(await sync("hi-b", "hi", { want: 2 }), "hi");
    const a = grantOf(await sync("hi-a", "hi", { want: 2 }), "hi");
    expect(a).toMatchObject({ slots: 0, target: 1 });
    const started = Date.now();
    const woken = t.dispatch.waitForWork({
      dispatcherId: "hi-a",
      grow: ["hi"],
      known: ["hi"],
      wait: ms(POLL_MS),
    });
    expect(await settledWithin(woken, QUIET_MS)).toBe("waiting"); // 2 of 2 slots held
    await t.admin.setModelLimit({ model: "hi", limit: 4 });
    expect((await woken).models).toEqual(["hi"]);
    expect(Date.now() - started).toBeLessThan(POLL_MS / 2);
    const a1 = grantOf(await sync("hi-a", "hi", { token: a.token, want: 2 }), "hi");
    expect(a1).toMatchObject({ slots: 2, target: 2 });
    expect(await slotsHeld("hi")).toBe(4);
  });

  test("`more`: a holder at its share that wants more is not woken by free slots, only by a change to the model", async () => {
    await t.admin.setModelLimit({ model: "mo", limit: 2 });
    await batchOf("mo", 10);
    const a = grantOf(await sync("mo-a", "mo", { want: 2 }), "mo");
    expect(a).toMatchObject({ slots: 2, target: 2 });
    const wait = (w: number) =>
      t.dispatch.waitForWork({
        dispatcherId: "mo-a",
        known: ["mo"],
        more: ["mo"],
        wait: ms(w),
      });
    // Ready work, and the holder wants more, but nothing changed: no wake (no busy loop).
    expect((await wait(QUIET_MS)).models).toEqual([]);
    const woken = wait(POLL_MS);
    expect(await settledWithin(woken, QUIET_MS)).toBe("waiting");
    const started = Date.now();
    await t.admin.setModelLimit({ model: "mo", limit: 5 });
    expect((await woken).models).toEqual(["mo"]);
    expect(Date.now() - started).toBeLessThan(POLL_MS / 2);
    const a1 = grantOf(await sync("mo-a", "mo", { token: a.token, keep: 2, want: 5 }), "mo");
    expect(a1).toMatchObject({ slots: 5, target: 5 });
  });

  test("a changed limit wakes the holders of the model at once, work or not", async () => {
    await t.admin.setModelLimit({ model: "lc", limit: 4 });
    const a = grantOf(await sync("lc-a", "lc", { want: 4 }), "lc");
    expect(a).toMatchObject({ slots: 4, target: 4 });
    const woken = t.dispatch.waitForWork({
      dispatcherId: "lc-a",
      known: ["lc"],
      wait: ms(POLL_MS),
    });
    expect(await settledWithin(woken, QUIET_MS)).toBe("waiting");
    const started = Date.now();
    await t.admin.setModelLimit({ model: "lc", limit: 1 });
    expect((await woken).models).toEqual(["lc"]);
    expect(Date.now() - started).toBeLessThan(POLL_MS / 2);
    // Its next Sync reads the lowered share; its slots come back through keep.
    const a1 = grantOf(await sync("lc-a", "lc", { token: a.token, keep: 4, want: 4 }), "lc");
    expect(a1).toMatchObject({ slots: 4, target: 1 });
  });

  test("ListModelLimits and a batch's shares show what runs (≤ the limit) apart from the requests claimed", async () => {
    await t.admin.setModelLimit({ model: "ls", limit: 3 });
    const batch = await batchOf("ls", 10);
    const a = grantOf(await sync("ls-a", "ls", { want: 3 }), "ls");
    const claimed = await t.dispatch.sync({
      dispatcherId: "ls-a",
      slots: [{ model: "ls", token: a.token, keep: 3, want: 3, room: 5 }],
    });
    expect(claimed.claims).toHaveLength(5);
    const { modelLimits } = await t.admin.listModelLimits({ pageSize: 1000 });
    const ls = modelLimits.find((l) => l.model === "ls");
    expect(ls).toMatchObject({ limit: 3, slotsGranted: 3, inFlight: 5, pending: 5n });
    // Three run in the slots; two are buffered, queued with the five pending.
    expect(ls).toMatchObject({ running: 3, queued: 7n });
    const { batch: b } = await t.batch.getBatch({ batchId: batch.id });
    expect(b?.shares).toEqual([
      expect.objectContaining({ inFlight: 5, modelInFlight: 5, running: 3, modelRunning: 3 }),
    ]);
  });
});
