/**
 * Rate grants (docs/pacing.md, "Rate grants") through Sync: each dispatcher's
 * share of a model's requests and tokens per minute, by demand, never adding
 * up past the rate with what every holder may still be spending (a cut share
 * counts until its holder says it spends the new one, or its grant expires).
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

let t: TestControlPlane;
let sql: pg.Pool;

beforeAll(async () => {
  t = await startTestControlPlane({ leaseTtlMs: 60_000, defaultLimit: 10 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
});
afterAll(async () => {
  await sql?.end();
  await t?.close();
});

const tokens = new Map<string, bigint>();

/**
 * One Sync of `model` as `holder` wanting `want` slots (and `rateWant` requests a minute),
 * saying it spends `rpmHeld` a minute now (undefined: not said).
 */
async function sync(
  holder: string,
  model: string,
  want = 5,
  rateWant = 0,
  rpmHeld?: number,
  tpmHeld?: number,
) {
  const key = `${holder}/${model}`;
  const res = await t.dispatch.sync({
    dispatcherId: holder,
    slots: [
      {
        model,
        token: tokens.get(key) ?? 0n,
        keep: want,
        want,
        room: 0,
        rateWant,
        rpmHeld,
        tpmHeld,
      },
    ],
  });
  const g = res.grants[0];
  if (g) tokens.set(key, g.token);
  return g;
}

/** Σ of what every holder counts now (the invariant: never above the rate). */
async function counted(model: string) {
  const r = await sql.query(
    `SELECT coalesce(sum(greatest(
       CASE WHEN expires_at > now() THEN rpm ELSE 0 END,
       CASE WHEN rpm_counted_until > now() THEN rpm_counted ELSE 0 END)), 0)::int AS n
     FROM rate_shares WHERE model = $1`,
    [model],
  );
  return r.rows[0].n as number;
}

/** Ends the counting of `holder`'s cut share, as its grant running out would. */
async function grantRunsOut(model: string, holder: string) {
  await sql.query(
    `UPDATE rate_shares SET rpm_counted_until = now() - interval '1 ms',
       tpm_counted_until = now() - interval '1 ms' WHERE model = $1 AND holder = $2`,
    [model, holder],
  );
}

describe("rate grants", () => {
  test("no rate: the grant carries none", async () => {
    await t.admin.setModelLimit({ model: "plain", limit: 10 });
    const g = await sync("a", "plain");
    expect(g?.rpm).toBeUndefined();
    expect(g?.tpm).toBeUndefined();
  });

  test("a lone dispatcher gets all of the rate; a second gets it once the first says it spends its cut", async () => {
    await t.admin.setModelLimit({ model: "r", limit: 10, rpm: 3000, tpm: 90_000 });
    expect(await sync("a", "r")).toMatchObject({ rpm: 3000, tpm: 90_000 });
    // B arrives: A holds (and counts) all of it: B gets nothing yet.
    expect(await sync("b", "r")).toMatchObject({ rpm: 0, tpm: 0 });
    expect(await counted("r")).toBe(3000);
    // A's next Sync cuts it to its fair share at once; until A says it spends the cut share,
    // it may still be spending the old one, which counts.
    expect(await sync("a", "r", 5, 0, 3000, 90_000)).toMatchObject({ rpm: 1500, tpm: 45_000 });
    expect(await sync("b", "r")).toMatchObject({ rpm: 0, tpm: 0 });
    expect(await counted("r")).toBe(3000);
    // A's next Sync says it spends 1,500 (and 45,000 tokens): B gets the rest.
    expect(await sync("a", "r", 5, 0, 1500, 45_000)).toMatchObject({ rpm: 1500 });
    expect(await sync("b", "r")).toMatchObject({ rpm: 1500, tpm: 45_000 });
    expect(await counted("r")).toBe(3000);
  });

  test("a cut share that is never acknowledged counts until the grant runs out", async () => {
    await t.admin.setModelLimit({ model: "u", limit: 10, rpm: 1000 });
    expect((await sync("a", "u"))?.rpm).toBe(1000);
    expect((await sync("b", "u"))?.rpm).toBe(0);
    expect((await sync("a", "u"))?.rpm).toBe(500); // A says nothing of what it spends
    expect((await sync("b", "u"))?.rpm).toBe(0);
    await grantRunsOut("u", "a");
    expect((await sync("b", "u"))?.rpm).toBe(500);
    expect(await counted("u")).toBe(1000);
  });

  test("shares follow demand (water filling), and never add up past the rate", async () => {
    await t.admin.setModelLimit({ model: "d", limit: 10, rpm: 1000 });
    // Small first: each of three arrives while the others hold what they were given.
    expect((await sync("x", "d", 5, 100))?.rpm).toBe(100);
    expect((await sync("y", "d", 5, 5000))?.rpm).toBe(900);
    expect((await sync("z", "d", 5, 5000))?.rpm).toBe(0);
    expect(await counted("d")).toBe(1000);
    // y is cut to its share of what x leaves (450); z gets it once y says it spends 450.
    expect((await sync("y", "d", 5, 5000, 900))?.rpm).toBe(450);
    expect((await sync("z", "d", 5, 5000))?.rpm).toBe(0);
    expect((await sync("y", "d", 5, 5000, 450))?.rpm).toBe(450);
    expect((await sync("z", "d", 5, 5000))?.rpm).toBe(450);
    expect(await counted("d")).toBe(1000);
  });

  test("a lowered rate cuts at the next Sync; an expired grant counts until its expiry", async () => {
    await t.admin.setModelLimit({ model: "e", limit: 10, rpm: 600 });
    expect((await sync("p", "e"))?.rpm).toBe(600);
    await t.admin.setModelLimit({ model: "e", keepLimit: true, rpm: 120 });
    expect((await sync("p", "e", 5, 0, 600))?.rpm).toBe(120);
    await t.admin.setModelLimit({ model: "e", keepLimit: true, rpm: 600 });
    // p's live share counts (it wants and spends 120): a newcomer gets the rest.
    expect((await sync("p", "e", 5, 120, 120))?.rpm).toBe(120);
    expect((await sync("q", "e"))?.rpm).toBe(480);
    // p stops (dies): its grant expires; the holder fenced itself before: nothing counts.
    await sql.query(
      `UPDATE rate_shares SET expires_at = now() - interval '1 ms',
         rpm_counted_until = NULL WHERE model = 'e' AND holder = 'p'`,
    );
    expect((await sync("q", "e", 5, 0, 480))?.rpm).toBe(600);
  });

  test("pacing views: what each holder says, summed in ListModelLimits with the slowest mode", async () => {
    await t.admin.setModelLimit({ model: "v", limit: 10, rpm: 600 });
    const view = async (
      holder: string,
      mode: string,
      concurrency: number,
      calls: number,
      thr: number,
    ) => {
      const key = `${holder}/v`;
      const res = await t.dispatch.sync({
        dispatcherId: holder,
        slots: [
          {
            model: "v",
            token: tokens.get(key) ?? 0n,
            keep: 5,
            want: 5,
            room: 0,
            pacing: { mode, concurrency, callsLastMinute: calls, throttledLastMinute: thr },
          },
        ],
      });
      tokens.set(key, res.grants[0]!.token);
    };
    const listed = async () =>
      (await t.admin.listModelLimits({})).modelLimits.find((m) => m.model === "v")?.pacing;
    // A first Sync makes the grant; the view is kept from the next on.
    await view("v1", "paced", 3, 290, 0);
    await view("v1", "paced", 3, 290, 0);
    expect(await listed()).toMatchObject({ mode: "paced", concurrency: 3, dispatchers: 1 });
    await view("v2", "backing_off", 2, 310, 31);
    await view("v2", "backing_off", 2, 310, 31);
    expect(await listed()).toMatchObject({
      mode: "backing_off",
      concurrency: 5,
      callsLastMinute: 600,
      throttledLastMinute: 31,
      dispatchers: 2,
    });
    // A dead holder's view goes with its grant.
    await sql.query(
      `UPDATE slot_grants SET expires_at = now() - interval '1 ms' WHERE model = 'v' AND holder = 'v2'`,
    );
    expect(await listed()).toMatchObject({ mode: "paced", concurrency: 3, dispatchers: 1 });
    await expect(view("v1", "sleepy", 1, 0, 0)).rejects.toThrow(/slots\[0\]\.pacing\.mode/);
  });

  test("a negative rate_want is INVALID_ARGUMENT naming the field", async () => {
    await expect(
      t.dispatch.sync({
        dispatcherId: "n",
        slots: [{ model: "r", token: 0n, keep: 0, want: 1, room: 0, rateWant: -1 }],
      }),
    ).rejects.toThrow(/slots\[0\]\.rate_want/);
  });
});
