/**
 * A model's rates through AdminService (docs/pacing.md): requests and
 * tokens per minute set, changed alone, cleared, and listed beside the
 * concurrency limit; bad values refused naming the field, changing nothing.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

let t: TestControlPlane;
let sql: pg.Pool;

beforeAll(async () => {
  t = await startTestControlPlane({ defaultLimit: 10 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 1 });
});
afterAll(async () => {
  await sql?.end();
  await t?.close();
});

async function rejection(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    return ConnectError.from(e);
  }
  throw new Error("expected a rejection");
}

async function stored(model: string) {
  const r = await sql.query(`SELECT max_in_flight, rpm, tpm FROM model_limits WHERE model = $1`, [
    model,
  ]);
  return r.rows[0];
}

describe("SetModelLimit with rates", () => {
  test("a limit with rpm and tpm; then a rate alone keeps the limit; then cleared", async () => {
    const set = await t.admin.setModelLimit({ model: "r1", limit: 500, rpm: 3000, tpm: 60_000 });
    expect(set.modelLimit).toMatchObject({ model: "r1", limit: 500, rpm: 3000, tpm: 60_000 });
    expect(await stored("r1")).toEqual({ max_in_flight: 500, rpm: 3000, tpm: 60_000 });

    const rateOnly = await t.admin.setModelLimit({ model: "r1", keepLimit: true, rpm: 1200 });
    expect(rateOnly.modelLimit).toMatchObject({
      limit: 500,
      isDefault: false,
      rpm: 1200,
      tpm: 60_000,
    });

    // A limit alone (as older clients send it) leaves the rates.
    await t.admin.setModelLimit({ model: "r1", limit: 20 });
    expect(await stored("r1")).toEqual({ max_in_flight: 20, rpm: 1200, tpm: 60_000 });

    const cleared = await t.admin.setModelLimit({
      model: "r1",
      keepLimit: true,
      clearRpm: true,
      clearTpm: true,
    });
    expect(cleared.modelLimit!.rpm).toBeUndefined();
    expect(cleared.modelLimit!.tpm).toBeUndefined();
    expect(await stored("r1")).toEqual({ max_in_flight: 20, rpm: null, tpm: null });
  });

  test("a rate on a model with no row: the limit stays the default", async () => {
    const r = await t.admin.setModelLimit({ model: "r2", keepLimit: true, tpm: 90_000 });
    expect(r.modelLimit).toMatchObject({ limit: 10, isDefault: true, tpm: 90_000 });
    expect(r.modelLimit!.rpm).toBeUndefined();
  });

  test("ListModelLimits shows the rates", async () => {
    await t.admin.setModelLimit({ model: "r3", limit: 7, rpm: 60 });
    const list = await t.admin.listModelLimits({});
    expect(list.modelLimits.find((m) => m.model === "r3")).toMatchObject({ limit: 7, rpm: 60 });
  });

  test.each([
    [{ rpm: 0 }, "rpm"],
    [{ rpm: -5 }, "rpm"],
    [{ tpm: 1_000_000_001 }, "tpm"],
    [{ rpm: 10, clearRpm: true }, "rpm"],
    [{ tpm: 10, clearTpm: true }, "tpm"],
    [{ limit: -1, rpm: 100 }, "limit"],
  ])("%j is INVALID_ARGUMENT naming %s, and nothing changes", async (fields, field) => {
    await t.admin.setModelLimit({ model: "r4", limit: 5, rpm: 100, tpm: 1000 });
    const e = await rejection(t.admin.setModelLimit({ model: "r4", ...fields }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.rawMessage).toMatch(new RegExp(`^${field}\\b`));
    expect(await stored("r4")).toEqual({ max_in_flight: 5, rpm: 100, tpm: 1000 });
  });
});
