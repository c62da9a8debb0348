/**
 * Model routes through AdminService on a real socket: set, list (never a
 * key), replace, delete; an upload without an endpoint takes each model's
 * route (a tenant's own before the operator's, a model's before '*'), with
 * the route's key stored encrypted; a model without a route refuses the
 * upload naming it and the line, and leaves no rows; admins only.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { TokenRole } from "../../src/gen/fusillade/v1/admin_service_pb.js";
import { clients, startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

const ADMIN = "routes-admin-token";
let t: TestControlPlane;
let sql: pg.Pool;
let tenantA: ReturnType<typeof clients>;

beforeAll(async () => {
  t = await startTestControlPlane({ adminToken: ADMIN });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  const made = await t.admin.createToken({ role: TokenRole.CLIENT, tenant: "tenant-a" });
  tenantA = clients(t.url, "connect-h2", made.secret);
});
afterAll(async () => {
  await sql?.end();
  await t?.close();
});

const enc = new TextEncoder();
const line = (i: number, model: string) =>
  JSON.stringify({
    custom_id: `r-${i}`,
    method: "POST",
    url: "/v1/chat/completions",
    body: { model, messages: [] },
  });

/** Uploads `models` (one line each) without an endpoint as `c`; the stored endpoints by line. */
async function upload(c: ReturnType<typeof clients>, models: string[]) {
  const res = await c.batch.uploadFile(
    (async function* () {
      yield { part: { case: "header" as const, value: { filename: "routed.jsonl" } } };
      yield {
        part: {
          case: "chunk" as const,
          value: enc.encode(models.map((m, i) => line(i, m)).join("\n")),
        },
      };
    })(),
  );
  const { rows } = await sql.query<{ endpoint: string; model: string; key: string | null }>(
    `SELECT t.endpoint, t.model, k.key_id AS key FROM request_templates t
     LEFT JOIN api_keys k ON k.id = t.api_key_id WHERE t.file_id = $1 ORDER BY t.line`,
    [res.file!.id],
  );
  return rows;
}

describe("model routes", () => {
  test("set, list without keys, and an upload without an endpoint takes each model's route", async () => {
    await t.admin.setRoute({ model: "*", endpoint: "http://any.test/" });
    const set = await t.admin.setRoute({
      model: "gpt-x",
      endpoint: "http://gpt.test",
      apiKey: "sk-route-secret",
    });
    expect(set.route).toMatchObject({
      model: "gpt-x",
      endpoint: "http://gpt.test",
      hasApiKey: true,
    });
    const listed = await t.admin.listRoutes({});
    expect(
      JSON.stringify(listed, (_k, v) => (typeof v === "bigint" ? String(v) : v)),
    ).not.toContain("sk-route-secret");
    expect(listed.routes.map((r) => [r.tenant, r.model, r.hasApiKey])).toEqual([
      ["", "*", false],
      ["", "gpt-x", true],
    ]);
    // The key is stored encrypted, never in plain text.
    const keys = await sql.query<{ sealed: Buffer }>(`SELECT sealed FROM api_keys`);
    for (const k of keys.rows) expect(k.sealed.toString("utf8")).not.toContain("sk-route-secret");

    const rows = await upload(t, ["gpt-x", "other", "gpt-x"]);
    expect(rows.map((r) => r.endpoint)).toEqual([
      "http://gpt.test",
      "http://any.test",
      "http://gpt.test",
    ]);
    expect(rows[0]!.key).not.toBeNull();
    expect(rows[1]!.key).toBeNull();
  });

  test("a tenant's own route comes before the operator's; other tenants keep the operator's", async () => {
    await t.admin.setRoute({ tenant: "tenant-a", model: "*", endpoint: "http://a.test" });
    expect((await upload(tenantA, ["gpt-x"]))[0]!.endpoint).toBe("http://a.test");
    expect((await upload(t, ["gpt-x"]))[0]!.endpoint).toBe("http://gpt.test");
    await t.admin.deleteRoute({ tenant: "tenant-a", model: "*" });
    expect((await upload(tenantA, ["gpt-x"]))[0]!.endpoint).toBe("http://gpt.test");
  });

  test("a model without a route refuses the upload, naming it and its line, and leaves no rows", async () => {
    await t.admin.deleteRoute({ model: "*" });
    const before = await sql.query<{ n: number }>(`SELECT count(*)::int AS n FROM files`);
    const e = await upload(t, ["gpt-x", "lost-model"]).catch((x: unknown) => ConnectError.from(x));
    expect(e).toBeInstanceOf(ConnectError);
    expect((e as ConnectError).code).toBe(Code.InvalidArgument);
    expect((e as ConnectError).rawMessage).toMatch(
      /line 2: body\.model: no route for model "lost-model"/,
    );
    const after = await sql.query<{ n: number }>(`SELECT count(*)::int AS n FROM files`);
    expect(after.rows[0]!.n).toBe(before.rows[0]!.n);
  });

  test("replacing or deleting a route deletes its stored key; unknown routes are NOT_FOUND", async () => {
    const count = async () =>
      (
        await sql.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM api_keys WHERE file_id IS NULL`,
        )
      ).rows[0]!.n;
    const n = await count();
    await t.admin.setRoute({ model: "gpt-x", endpoint: "http://gpt.test", apiKey: "sk-2" });
    expect(await count()).toBe(n);
    await t.admin.deleteRoute({ model: "gpt-x" });
    expect(await count()).toBe(n - 1);
    await expect(t.admin.deleteRoute({ model: "gpt-x" })).rejects.toMatchObject({
      code: Code.NotFound,
    });
  });

  test("bad input names the field; client tokens may not touch routes", async () => {
    await expect(t.admin.setRoute({ model: "m", endpoint: "ftp://x" })).rejects.toThrow(/endpoint/);
    await expect(t.admin.setRoute({ model: "", endpoint: "http://x.test" })).rejects.toThrow(
      /model/,
    );
    await expect(
      t.admin.setRoute({ tenant: "bad tenant!", model: "m", endpoint: "http://x.test" }),
    ).rejects.toThrow(/tenant/);
    await expect(tenantA.admin.listRoutes({})).rejects.toMatchObject({
      code: Code.PermissionDenied,
    });
  });
});
