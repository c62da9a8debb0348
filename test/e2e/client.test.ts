/**
 * `fusillade/client` against `fusillade serve` (on this file's own test
 * database) and a loopback upstream: the TypeScript example as a user runs
 * it (compiled, importing the package by name), then each helper, and the
 * one error type with its gRPC code.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { inspect, promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  Code,
  createFusilladeClient,
  type FusilladeClient,
  FusilladeError,
  gen,
} from "../../src/client/index.js";
import { TokenRole } from "../../src/gen/fusillade/v1/admin_service_pb.js";
import { buildDist, ROOT, tsc } from "../helpers/build.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import { type FusilladeProcess, spawnFusillade } from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const EXAMPLE = path.join(ROOT, "examples/typescript/dist/basic.js");
const run = promisify(execFile);

let db: TestDatabase;
let serve: FusilladeProcess;
let url: string;
let upstream: Upstream;
let client: FusilladeClient;
let dir: string;

beforeAll(async () => {
  // The example imports "fusillade/client": the package's export, from dist/.
  await buildDist();
  await tsc("examples/typescript");
  if (!existsSync(EXAMPLE)) throw new Error("the example did not build");
  db = await createTestDatabase();
  upstream = await startUpstream();
  serve = spawnFusillade(["serve", "--listen", "127.0.0.1:0"], {
    DATABASE_URL: db.url,
    FUSILLADE_LOG_LEVEL: "warn",
  });
  [, url] = (await serve.waitFor(/serving on (http:\/\/\S+)/, 60_000)) as [string, string];
  client = createFusilladeClient({ baseUrl: url });
  dir = await mkdtemp(path.join(os.tmpdir(), "fusillade-client-"));
}, 180_000);

afterAll(async () => {
  client?.close();
  await serve?.stop();
  await upstream?.close();
  await db?.drop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** What `p` rejected with; it must be a FusilladeError. */
async function rejection(p: Promise<unknown>): Promise<FusilladeError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(FusilladeError);
  return e as FusilladeError;
}

async function all<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

describe("fusillade/client", () => {
  it("runs the TypeScript example: two templates, a batch, its status, its requests", async () => {
    const r = await run(process.execPath, [EXAMPLE, "--server", url, "--endpoint", upstream.url], {
      cwd: dir,
      env: { PATH: process.env.PATH, OPENAI_API_KEY: "sk-example" },
    });
    expect(r.stdout).toMatch(/^file \S+: 2 templates, models gpt-4o-mini$/m);
    expect(r.stdout).toMatch(/^batch \S+ completed$/m);
    expect(r.stdout).toMatch(/^request question-1: 200 \{.*"custom_id":"question-1"/m);
    expect(r.stdout).toMatch(/^request question-2: 200 /m);
    expect(upstream.of("question-1")[0]!.authorization).toBe("Bearer sk-example");
  });

  it("uploads a JSONL file, starts a batch with options, watches it, pages its requests and reads its results", async () => {
    upstream.script("t-2", [{ status: 400, body: '{"error":{"message":"bad"}}' }]);
    const lines = Array.from({ length: 5 }, (_, i) =>
      JSON.stringify({
        custom_id: `t-${i + 1}`,
        method: "POST",
        url: "/v1/chat/completions",
        body: { model: "ts-model", n: i },
      }),
    );
    const jsonlPath = path.join(dir, "five.jsonl");
    await writeFile(jsonlPath, `${lines.join("\n")}\n`);
    const file = await client.uploadFile(jsonlPath, { endpoint: upstream.url });
    // Plain values: numbers, names, Dates; nothing of the generated messages.
    expect(file).toMatchObject({ filename: "five.jsonl", templateCount: 5, models: ["ts-model"] });
    expect(file.createTime).toBeInstanceOf(Date);
    expect(inspect(file)).not.toContain("$typeName");
    expect(await client.getFile(file.id)).toEqual(file);

    const batch = await client.createBatch(file.id, {
      completionWindow: "2h",
      metadata: { run: "ts" },
      retryPolicy: { maxRetries: 1, initialBackoffMs: 100 },
      priority: 4,
    });
    expect(batch).toMatchObject({
      state: "in_progress",
      completionWindow: "2h",
      metadata: { run: "ts" },
      priority: 4,
      retryPolicy: { maxRetries: 1, initialBackoffMs: 100 },
      counts: { total: 5 },
    });
    // What a client of a running batch may see of its model: read-only, plain.
    const models = await client.listModels({ batchId: batch.id });
    expect(models).toEqual([
      expect.objectContaining({ model: "ts-model", isDefault: true, rpm: null, holdUntil: null }),
    ]);
    expect(typeof models[0]!.queued).toBe("number");

    const seen = await all(client.watchBatch(batch.id, { minIntervalMs: 50 }));
    const last = seen.at(-1)!;
    expect(last.state).toBe("completed");
    // Counts mix with numbers and serialize (bigints threw in both).
    expect(last.counts.completed + last.counts.failed + 0.5).toBe(5.5);
    expect(JSON.parse(JSON.stringify(last))).toMatchObject({
      state: "completed",
      counts: { total: 5 },
    });
    expect(inspect(last)).not.toContain("$typeName");
    const status = await client.getBatchStatus(batch.id);
    expect(status).toMatchObject({
      batchId: batch.id,
      state: "completed",
      counts: { total: 5, completed: 4, failed: 1, cancelled: 0 },
    });

    const pages = await all(client.listRequests(batch.id, { pageSize: 2 }));
    expect(pages.map((p) => p.length)).toEqual([2, 2, 1]);
    const failed = (await all(client.listRequests(batch.id, { states: ["failed"] }))).flat();
    expect(failed.map((r) => [r.customId, r.state, r.response?.statusCode])).toEqual([
      ["t-2", "failed", 400],
    ]);
    const one = await client.getRequest({ batchId: batch.id, customId: "t-2" });
    expect(one.request.state).toBe("failed");
    expect(one.attempts.map((a) => [a.outcome, a.statusCode])).toEqual([["failed", 400]]);

    const results = await all(client.results(batch.id));
    expect(results.map((l) => l.custom_id).sort()).toEqual(["t-1", "t-2", "t-3", "t-4", "t-5"]);
    const errors = await all(client.results(batch.id, { only: "errors" }));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({
      custom_id: "t-2",
      response: { status_code: 400, body: { error: { message: "bad" } } },
    });

    // A result line's id names its request.
    const byLineId = await client.getRequest({ requestId: errors[0]!.id });
    expect(byLineId.request.customId).toBe("t-2");

    const retried = await client.retryBatch(batch.id, { customIds: ["t-2"] });
    expect(retried.retried).toBe(1);
    expect(retried.batch.state).toBe("in_progress");
  });

  it("keeps the generated clients and types one level down", async () => {
    const file = await client.createFile({
      templates: [{ customId: "g", endpoint: upstream.url, path: "/v1/x", body: { model: "g" } }],
    });
    const raw = await client.raw.batch.getFile({ fileId: file.id });
    expect(raw.file?.templateCount).toBe(1n);
    expect(gen.BatchState.COMPLETED).toBe(2);
    expect(gen.RequestState.FAILED).toBe(4);
    expect(gen.BatchService.typeName).toBe("fusillade.v1.BatchService");
  });

  it("throws one error type carrying the gRPC code and the server's message", async () => {
    const bad = await rejection(
      client.createFile({
        jsonl: '{"method":"POST","url":"/v1/x","body":{"model":"m"}}\n',
        endpoint: upstream.url,
      }),
    );
    expect(bad.code).toBe(Code.InvalidArgument);
    expect(bad.codeName).toBe("InvalidArgument");
    expect(bad.rawMessage).toMatch(/^line 1: custom_id: is required/);

    const missing = await rejection(client.getBatch("00000000-0000-4000-8000-000000000000"));
    expect(missing.code).toBe(Code.NotFound);

    // Streams too, and a server that is not there.
    const streamed = await rejection(
      all(client.watchBatch("00000000-0000-4000-8000-000000000000")),
    );
    expect(streamed.code).toBe(Code.NotFound);
    const down = createFusilladeClient({ baseUrl: "http://127.0.0.1:1", httpVersion: "1.1" });
    const unavailable = await rejection(down.getBatch("x"));
    expect(unavailable.code).toBe(Code.Unavailable);
    down.close();
  });

  it("creates a file from templates, sending its token: a wrong one is UNAUTHENTICATED", async () => {
    const wrong = createFusilladeClient({ baseUrl: url, token: "fus_wrong", httpVersion: "1.1" });
    try {
      const e = await rejection(wrong.getBatchStatus("00000000-0000-4000-8000-000000000000"));
      expect(e.code).toBe(Code.Unauthenticated);
    } finally {
      wrong.close();
    }
    // Local mode: the call without a token is an admin's, and may make a client token.
    const { secret } = await client.raw.admin.createToken({
      role: TokenRole.CLIENT,
      tenant: "default",
      name: "ts-client-test",
    });
    const withToken = createFusilladeClient({ baseUrl: url, token: secret, httpVersion: "1.1" });
    try {
      const file = await withToken.createFile({
        templates: [
          { customId: "a", endpoint: upstream.url, path: "/v1/x", body: { model: "tpl" } },
          { customId: "b", endpoint: upstream.url, path: "/v1/x", body: '{"model":"tpl"}' },
        ],
      });
      expect(file.templateCount).toBe(2);
    } finally {
      withToken.close();
    }
  });
});
