/**
 * The plans of the statements that change many claimed requests at once
 * (src/leases/sql.ts), where the planner is most likely to be wrong: the
 * statistics were taken with few requests leased, and many more are leased
 * now (a batch that has just started; autovacuum analyzes a minute later at
 * best). Each statement takes its row locks in id order through `lk`; joined
 * to the update, `lk` was read again for every reported row (a nested loop:
 * 39,800 rows compared and thrown away for a report of 200). Here a report
 * of 200 must compare no row with more than a few others, and `lk` must be
 * read by its InitPlan alone.
 */
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import * as leaseSql from "../../src/leases/sql.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { createTestBatch, items } from "../helpers/dispatcher-process.js";

let t: TestControlPlane;
let sql: pg.Pool;
/** Leased when the statistics were taken, and leased now. */
const LEASED_AT_ANALYZE = 120;
const LEASED_NOW = 1500;
/** Requests in one report. */
const N = 200;
const TOKEN = "7";
let ids: string[];

/** Leases `n` more pending requests of `batchId` with {@link TOKEN}. */
async function lease(batchId: string, n: number): Promise<void> {
  await sql.query(
    `UPDATE requests SET state = 'leased', lease_token = $3, lease_holder = 'plans',
        lease_expires_at = now() + interval '1 hour', attempt = attempt + 1
      WHERE id IN (SELECT id FROM requests WHERE batch_id = $1 AND state = 'pending'
                   ORDER BY line LIMIT $2)`,
    [batchId, n, TOKEN],
  );
}

beforeAll(async () => {
  t = await startTestControlPlane();
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  const batchId = await createTestBatch(t.batch, "http://127.0.0.1:9", items("P", 3000));
  await lease(batchId, LEASED_AT_ANALYZE);
  await sql.query("VACUUM ANALYZE requests");
  await lease(batchId, LEASED_NOW - LEASED_AT_ANALYZE);
  ids = (
    await sql.query<{ id: string }>(
      "SELECT id FROM requests WHERE state = 'leased' ORDER BY line DESC LIMIT $1",
      [N],
    )
  ).rows.map((r) => r.id);
});
afterAll(async () => {
  await sql?.end();
  await t?.close();
});

interface PlanNode {
  "Node Type": string;
  "Parent Relationship"?: string;
  "CTE Name"?: string;
  "Actual Rows": number;
  "Actual Loops": number;
  "Rows Removed by Join Filter"?: number;
  Plans?: PlanNode[];
}

/** EXPLAIN ANALYZE of `text` in a transaction that is rolled back: nothing changes. */
async function explain(text: string, params: unknown[]): Promise<PlanNode> {
  const client = await sql.connect();
  try {
    await client.query("BEGIN");
    const res = await client.query<{ "QUERY PLAN": Array<{ Plan: PlanNode }> }>(
      `EXPLAIN (ANALYZE, FORMAT JSON) ${text}`,
      params,
    );
    return res.rows[0]!["QUERY PLAN"][0]!.Plan;
  } finally {
    await client.query("ROLLBACK");
    client.release();
  }
}

/** Every node, with whether it sits under an InitPlan. */
function nodes(p: PlanNode, inInitPlan = false): Array<{ node: PlanNode; inInitPlan: boolean }> {
  const here = inInitPlan || p["Parent Relationship"] === "InitPlan";
  return [{ node: p, inInitPlan: here }, ...(p.Plans ?? []).flatMap((c) => nodes(c, here))];
}

const tokens = () => ids.map(() => TOKEN);
const statements: Array<[string, string, () => unknown[]]> = [
  [
    "REQUESTS_COMPLETE",
    leaseSql.REQUESTS_COMPLETE,
    () => [
      ids,
      tokens(),
      ids.map(() => 200),
      JSON.stringify(ids.map(() => ({ "content-type": "application/json" }))),
      Buffer.from("{}".repeat(N)),
      ids.map((_, i) => 1 + 2 * i),
      ids.map(() => 2),
    ],
  ],
  [
    "REQUESTS_FAIL",
    leaseSql.REQUESTS_FAIL,
    () => [
      ids,
      tokens(),
      ids.map(() => "pending"),
      ids.map(() => new Date()),
      ids.map(() => 500),
      ids.map(() => "{}"),
      ids.map(() => Buffer.from("oops")),
      ids.map(() => "upstream_5xx"),
      ids.map(() => "HTTP 500"),
      ids.map(() => false),
    ],
  ],
  ["REQUESTS_RELEASE", leaseSql.REQUESTS_RELEASE, () => [ids, tokens(), ids.map(() => true)]],
];

test.each(statements)(
  "%s: a report of 200 with stale statistics changes its 200 rows, compares none with the whole report, reads lk only in its InitPlan",
  async (_name, text, params) => {
    const plan = await explain(text, params());
    expect(plan["Actual Rows"]).toBe(N);
    const all = nodes(plan);
    const discarded = all.reduce(
      (sum, { node }) => sum + (node["Rows Removed by Join Filter"] ?? 0),
      0,
    );
    expect(discarded, "rows compared and thrown away by join filters").toBeLessThanOrEqual(N);
    const lkScans = all.filter(({ node }) => node["CTE Name"] === "lk");
    expect(lkScans.length).toBeGreaterThan(0);
    for (const { node, inInitPlan } of lkScans) {
      expect(inInitPlan, "lk read outside its InitPlan").toBe(true);
      expect(node["Actual Loops"]).toBe(1);
    }
  },
);
