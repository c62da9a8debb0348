/**
 * Tokens and roles over real sockets (docs/trust.md): who may call what,
 * revocation on every replica, local mode and its Host check, and the refusal
 * to listen beyond loopback without an admin token.
 */
import http from "node:http";
import { Writable } from "node:stream";
import { toJson } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { CONTROL_PLANE_DEFAULTS } from "../../src/config/config.js";
import { startControlPlane } from "../../src/control-plane.js";
import {
  ListTokensResponseSchema,
  TokenRole,
} from "../../src/gen/fusillade/v1/admin_service_pb.js";
import { makeLogger } from "../../src/logger.js";
import { clients, startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

const ADMIN = "test-admin-token-0123456789abcdef";
let t: TestControlPlane;
let replica: TestControlPlane;

beforeAll(async () => {
  t = await startTestControlPlane({ adminToken: ADMIN });
  replica = await startTestControlPlane({ adminToken: ADMIN }, t.database);
});
afterAll(async () => {
  await replica?.stop();
  await t?.close();
});

async function code(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}

const waitZero = { seconds: 0n, nanos: 0 };

describe("with an admin token configured", () => {
  test("a call without a token, or with an unknown one, is UNAUTHENTICATED; Health is open", async () => {
    const anon = clients(t.url);
    expect(await code(anon.batch.listFiles({}))).toBe(Code.Unauthenticated);
    expect(await code(anon.admin.listTokens({}))).toBe(Code.Unauthenticated);
    const bad = clients(t.url, "connect-h2", "fus_not-a-real-token");
    expect(await code(bad.batch.listFiles({}))).toBe(Code.Unauthenticated);
    const res = await fetch(`${t.url}/grpc.health.v1.Health/Check`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(res.status).toBe(200);
  });

  test("each role reaches its services and is PERMISSION_DENIED elsewhere", async () => {
    const client = await t.admin.createToken({
      role: TokenRole.CLIENT,
      tenant: "acme",
      name: "ci",
    });
    const disp = await t.admin.createToken({ role: TokenRole.DISPATCHER });
    expect(client.secret).toMatch(/^fus_[A-Za-z0-9_-]{43}$/);
    const c = clients(t.url, "connect-h2", client.secret);
    const d = clients(t.url, "connect-h2", disp.secret);
    expect(await code(c.batch.listFiles({}))).toBe("ok");
    expect(await code(c.admin.listModelLimits({}))).toBe(Code.PermissionDenied);
    expect(await code(c.dispatch.waitForWork({ dispatcherId: "x", wait: waitZero }))).toBe(
      Code.PermissionDenied,
    );
    expect(await code(d.dispatch.waitForWork({ dispatcherId: "x", wait: waitZero }))).toBe("ok");
    expect(await code(d.batch.listFiles({}))).toBe(Code.PermissionDenied);
    expect(await code(d.admin.listTokens({}))).toBe(Code.PermissionDenied);
    // The admin token reaches everything.
    expect(await code(t.batch.listFiles({}))).toBe("ok");
    expect(await code(t.dispatch.waitForWork({ dispatcherId: "x", wait: waitZero }))).toBe("ok");
  });

  test("a token is shown once: ListTokens never carries a secret", async () => {
    const made = await t.admin.createToken({ role: TokenRole.CLIENT, tenant: "list-me" });
    const listed = await t.admin.listTokens({});
    const mine = listed.tokens.find((x) => x.id === made.token!.id)!;
    expect(mine).toMatchObject({ role: TokenRole.CLIENT, tenant: "list-me" });
    expect(JSON.stringify(toJson(ListTokensResponseSchema, listed))).not.toContain(made.secret);
  });

  test("bad token requests are INVALID_ARGUMENT naming the field", async () => {
    const e1 = await t.admin.createToken({ role: TokenRole.CLIENT }).catch((e) => e);
    expect(ConnectError.from(e1).code).toBe(Code.InvalidArgument);
    expect(ConnectError.from(e1).rawMessage).toContain("tenant");
    const e2 = await t.admin
      .createToken({ role: TokenRole.DISPATCHER, tenant: "acme" })
      .catch((e) => e);
    expect(ConnectError.from(e2).rawMessage).toContain("tenant");
    const e3 = await t.admin.createToken({ role: TokenRole.UNSPECIFIED }).catch((e) => e);
    expect(ConnectError.from(e3).rawMessage).toContain("role");
    const e4 = await t.admin.createToken({ role: TokenRole.CLIENT, tenant: "a b" }).catch((e) => e);
    expect(ConnectError.from(e4).rawMessage).toContain("tenant");
    expect(await code(t.admin.revokeToken({ id: "nope" }))).toBe(Code.NotFound);
  });

  test("a revoked token is refused at once here and on the other replica", async () => {
    const made = await t.admin.createToken({ role: TokenRole.CLIENT, tenant: "gone" });
    const here = clients(t.url, "connect-h2", made.secret);
    const there = clients(replica.url, "connect-h2", made.secret);
    expect(await code(here.batch.listFiles({}))).toBe("ok");
    expect(await code(there.batch.listFiles({}))).toBe("ok"); // cached there now
    const revoked = await t.admin.revokeToken({ id: made.token!.id });
    expect(revoked.token!.revokeTime).toBeDefined();
    expect(await code(here.batch.listFiles({}))).toBe(Code.Unauthenticated);
    // The replica drops its cache on NOTIFY fusillade_tokens: well before the cache's own
    // expiry (CACHE_TTL_MS in src/auth/authenticator.ts), which would also refuse it.
    const CACHE_TTL_MS = 10_000;
    const started = Date.now();
    while ((await code(there.batch.listFiles({}))) === "ok") {
      expect(Date.now() - started).toBeLessThan(CACHE_TTL_MS / 2);
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(await code(there.batch.listFiles({}))).toBe(Code.Unauthenticated);
  });
});

describe("tenants", () => {
  test("another tenant's ids are NOT_FOUND on every method, with the message of an id that does not exist", async () => {
    const mk = async (tenant: string) =>
      clients(
        t.url,
        "connect-h2",
        (await t.admin.createToken({ role: TokenRole.CLIENT, tenant })).secret,
      );
    const a = await mk("tenant-a");
    const b = await mk("tenant-b");
    const jsonl = new TextEncoder().encode(
      JSON.stringify({ custom_id: "c1", method: "POST", url: "/v1/x", body: { model: "tm" } }),
    );
    const fileA = (
      await a.batch.createFile({
        jsonl,
        endpoint: "http://upstream.example:9",
        requestId: "same-key",
      })
    ).file!;
    const batchA = (await a.batch.createBatch({ fileId: fileA.id, requestId: "same-key" })).batch!;
    const reqA = (await t.batch.listBatchRequests({ batchId: batchA.id })).requests[0]!;
    const ghost = "00000000-0000-4000-8000-000000000000";

    const drain = async (it: AsyncIterable<unknown>) => {
      for await (const _ of it) {
        /* drain */
      }
    };
    const calls: Record<string, (id: string) => Promise<unknown>> = {
      getFile: (id) => b.batch.getFile({ fileId: id }),
      deleteFile: (id) => b.batch.deleteFile({ fileId: id }),
      createBatch: (id) => b.batch.createBatch({ fileId: id }),
      getBatch: (id) => b.batch.getBatch({ batchId: id }),
      getBatchStatus: (id) => b.batch.getBatchStatus({ batchId: id }),
      cancelBatch: (id) => b.batch.cancelBatch({ batchId: id }),
      deleteBatch: (id) => b.batch.deleteBatch({ batchId: id }),
      retryBatch: (id) => b.batch.retryBatch({ batchId: id }),
      listBatchRequests: (id) => b.batch.listBatchRequests({ batchId: id }),
      getBatchBreakdown: (id) => b.batch.getBatchBreakdown({ batchId: id }),
      streamBatchRequests: (id) => drain(b.batch.streamBatchRequests({ batchId: id })),
      watchBatch: (id) => drain(b.batch.watchBatch({ batchId: id })),
      getBatchResults: (id) => drain(b.batch.getBatchResults({ batchId: id })),
      getRequestByCustomId: (id) => b.batch.getRequest({ batchId: id, customId: "c1" }),
      listBatchModels: (id) => b.batch.listBatchModels({ batchId: id }),
    };
    const fileMethods = new Set(["getFile", "deleteFile", "createBatch"]);
    const failure = async (p: Promise<unknown>) => {
      const e = await p.then(
        () => undefined,
        (x) => ConnectError.from(x),
      );
      return e === undefined ? "ok" : `${Code[e.code]}: ${e.rawMessage}`;
    };
    for (const [name, call] of Object.entries(calls)) {
      const real = fileMethods.has(name) ? fileA.id : batchA.id;
      const theirs = await failure(call(real));
      const none = await failure(call(ghost));
      expect(theirs, name).toMatch(/^NotFound: /);
      expect(theirs.replace(real, "ID"), name).toBe(none.replace(ghost, "ID"));
    }
    const theirs = await failure(b.batch.getRequest({ requestId: reqA.id }));
    const none = await failure(b.batch.getRequest({ requestId: ghost }));
    expect(theirs.replace(reqA.id, "ID")).toBe(none.replace(ghost, "ID"));
    // Lists show one's own only; a request_id is one's own.
    expect((await b.batch.listFiles({})).files.map((f) => f.id)).not.toContain(fileA.id);
    expect((await b.batch.listBatches({})).batches.map((x) => x.id)).not.toContain(batchA.id);
    expect((await a.batch.listFiles({})).files.map((f) => f.id)).toContain(fileA.id);
    const fileB = (
      await b.batch.createFile({
        jsonl,
        endpoint: "http://upstream.example:9",
        requestId: "same-key",
      })
    ).file!;
    expect(fileB.id).not.toBe(fileA.id);
    // A's batch is untouched by B's attempts; the admin sees every tenant.
    expect((await a.batch.getBatch({ batchId: batchA.id })).batch!.state).toBe(batchA.state);
    expect((await t.batch.getFile({ fileId: fileB.id })).file!.id).toBe(fileB.id);
  });
});

describe("ListBatchModels", () => {
  test("a client sees the limits and use of its own batches' models, read-only; an admin every tenant's", async () => {
    const mk = async (tenant: string) =>
      clients(
        t.url,
        "connect-h2",
        (await t.admin.createToken({ role: TokenRole.CLIENT, tenant })).secret,
      );
    const a = await mk("models-a");
    const b = await mk("models-b");
    const start = async (c: typeof a, models: string[]) => {
      const jsonl = new TextEncoder().encode(
        models
          .map((model, i) =>
            JSON.stringify({ custom_id: `c${i}`, method: "POST", url: "/v1/x", body: { model } }),
          )
          .join("\n"),
      );
      const file = (await c.batch.createFile({ jsonl, endpoint: "http://upstream.example:9" }))
        .file!;
      return (await c.batch.createBatch({ fileId: file.id })).batch!;
    };
    await t.admin.setModelLimit({ model: "lbm-a1", limit: 3, rpm: 600 });
    const batchA = await start(a, ["lbm-a1", "lbm-a2", "lbm-a2"]);
    await start(b, ["lbm-b1"]);

    const seen = await a.batch.listBatchModels({});
    expect(seen.modelLimits.map((m) => m.model)).toEqual(["lbm-a1", "lbm-a2"]);
    expect(seen.modelLimits[0]).toMatchObject({ limit: 3, isDefault: false, rpm: 600, queued: 1n });
    expect(seen.modelLimits[1]).toMatchObject({ isDefault: true, running: 0, queued: 2n });
    expect(seen.defaultLimit).toBe(seen.modelLimits[1]!.limit);
    expect((await b.batch.listBatchModels({})).modelLimits.map((m) => m.model)).toEqual(["lbm-b1"]);
    const all = (await t.batch.listBatchModels({})).modelLimits.map((m) => m.model);
    expect(all).toEqual(expect.arrayContaining(["lbm-a1", "lbm-a2", "lbm-b1"]));
    // Limits stay the admin's to set.
    expect(await code(a.admin.setModelLimit({ model: "lbm-a1", limit: 9 }))).toBe(
      Code.PermissionDenied,
    );

    // A finished batch's models: by its id only.
    await a.batch.cancelBatch({ batchId: batchA.id });
    expect((await a.batch.listBatchModels({})).modelLimits).toEqual([]);
    expect(
      (await a.batch.listBatchModels({ batchId: batchA.id })).modelLimits.map((m) => m.model),
    ).toEqual(["lbm-a1", "lbm-a2"]);
  });
});

// The outbound policy (loopback, private, metadata…): test/integration/outbound-policy.test.ts.
describe("endpoints at upload", () => {
  const line = JSON.stringify({
    custom_id: "a",
    method: "POST",
    url: "/v1/x",
    body: { model: "m" },
  });
  const jsonl = new TextEncoder().encode(line);
  async function refusal(endpoint: string) {
    const e = await t.batch.createFile({ jsonl, endpoint }).catch((x) => ConnectError.from(x));
    return e instanceof ConnectError ? `${Code[e.code]}: ${e.rawMessage}` : "ok";
  }

  test("an endpoint with a user, password, query or fragment is refused everywhere", async () => {
    for (const bad of [
      "http://u:p@upstream.example:9",
      "http://u@upstream.example:9",
      "http://upstream.example:9/?k=1",
      "http://upstream.example:9/#f",
    ]) {
      expect(await refusal(bad)).toMatch(/^InvalidArgument: endpoint: must not carry/);
    }
  });
});

/** A Connect unary call with an explicit Host header, over HTTP/1.1. */
function callWithHost(url: string, host: string): Promise<number> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: u.hostname,
        port: u.port,
        method: "POST",
        path: "/fusillade.v1.BatchService/ListFiles",
        headers: { host, "content-type": "application/json" },
      },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on("error", reject);
    req.end("{}");
  });
}

test("a control plane with an admin token says at start that it runs in token mode", async () => {
  const lines: string[] = [];
  const log = pino(
    { level: "info" },
    new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString());
        done();
      },
    }),
  );
  const guarded = await startTestControlPlane(
    { adminToken: "start-line-admin-token-0123456789" },
    t.database,
    log,
  );
  await guarded.stop();
  const messages = lines.map((l) => (JSON.parse(l) as { msg: string }).msg);
  expect(messages).toContainEqual(expect.stringMatching(/^admin token configured: token mode/));
  expect(messages.join("\n")).not.toContain("start-line-admin-token");
});

describe("local mode (no admin token)", () => {
  let local: TestControlPlane;
  beforeAll(async () => {
    local = await startTestControlPlane();
  });
  afterAll(async () => {
    await local?.close();
  });

  test("calls without a token are accepted when addressed to a loopback name only", async () => {
    expect(await code(local.batch.listFiles({}))).toBe("ok");
    const port = new URL(local.url).port;
    expect(await callWithHost(local.url, `127.0.0.1:${port}`)).toBe(200);
    expect(await callWithHost(local.url, `localhost:${port}`)).toBe(200);
    // A page in a browser reaching 127.0.0.1 through a DNS name (rebinding).
    expect(await callWithHost(local.url, `evil.example:${port}`)).toBe(403);
  });

  test("listening beyond loopback without an admin token is refused at start, naming the setting", async () => {
    const log = makeLogger("silent");
    const start = startControlPlane(
      { ...CONTROL_PLANE_DEFAULTS, host: "0.0.0.0", port: 0, databaseUrl: local.database.url },
      log,
    );
    await expect(start).rejects.toThrow(/FUSILLADE_ADMIN_TOKEN/);
    const ok = await startControlPlane(
      {
        ...CONTROL_PLANE_DEFAULTS,
        host: "0.0.0.0",
        port: 0,
        databaseUrl: local.database.url,
        adminToken: ADMIN,
      },
      log,
    );
    await ok.close();
  });
});
