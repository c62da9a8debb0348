/**
 * The official OpenAI SDK against a real control plane and dispatcher
 * (docs/openai-api.md): upload, create, poll to completion, read the output
 * and error files (every custom_id exactly once), list with pagination,
 * cancel, error statuses, token mode and tenant isolation.
 */
import OpenAI, { toFile } from "openai";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { Dispatcher } from "../../src/dispatcher/dispatcher.js";
import { TokenRole } from "../../src/gen/fusillade/v1/admin_service_pb.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { startTestDispatcher } from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const ADMIN = "openai-sdk-admin";
let local: TestControlPlane;
let upstream: Upstream;
let dispatcher: Dispatcher;

beforeAll(async () => {
  // A small upload cap: the 413 test passes it with 70 kB.
  local = await startTestControlPlane({ reapIntervalMs: 200, maxUploadBytes: 64 * 1024 });
  upstream = await startUpstream();
  dispatcher = startTestDispatcher(local.url, { id: "openai-sdk" });
  await local.admin.setRoute({ model: "*", endpoint: upstream.url, apiKey: "sk-upstream" });
});
afterAll(async () => {
  await dispatcher?.stop(0);
  await upstream?.close();
  await local?.close();
});

/** An SDK client of `url` (local mode accepts whatever key it sends). */
const sdk = (url: string, apiKey = "any-key") =>
  new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0 });

function jsonl(ids: string[], model = "gpt-sdk", url = "/v1/chat/completions"): string {
  return ids
    .map((id) =>
      JSON.stringify({ custom_id: id, method: "POST", url, body: { model, messages: [] } }),
    )
    .join("\n");
}

async function upload(client: OpenAI, text: string, name = "batch.jsonl") {
  return client.files.create({ file: await toFile(Buffer.from(text), name), purpose: "batch" });
}

/** Polls as SDK users do, until the batch is in a final status. */
async function poll(client: OpenAI, id: string) {
  for (;;) {
    const b = await client.batches.retrieve(id);
    if (["completed", "failed", "expired", "cancelled"].includes(b.status)) return b;
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("the OpenAI SDK's batch flow", () => {
  test("upload, create, poll, read the output and error files: every custom_id exactly once", async () => {
    const client = sdk(local.url);
    const ids = Array.from({ length: 20 }, (_, i) => `q${i}`);
    upstream.script("q3", [{ status: 400, body: '{"error":"bad"}' }]);
    upstream.script("q7", [{ status: 404, body: "{}" }]);
    const file = await upload(client, jsonl(ids));
    expect(file).toMatchObject({ object: "file", purpose: "batch", filename: "batch.jsonl" });
    expect(file.bytes).toBe(Buffer.byteLength(jsonl(ids)));
    expect(await client.files.retrieve(file.id)).toMatchObject({ id: file.id, purpose: "batch" });
    const input = await (await client.files.content(file.id)).text();
    expect(
      input
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l).custom_id),
    ).toEqual(ids);

    const created = await client.batches.create({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
      metadata: { team: "sdk" },
    });
    expect(created).toMatchObject({
      object: "batch",
      status: "in_progress",
      endpoint: "/v1/chat/completions",
      input_file_id: file.id,
      metadata: { team: "sdk" },
      request_counts: { total: 20 },
    });
    expect(Number.isInteger(created.created_at)).toBe(true);
    expect(Math.abs(created.created_at - Date.now() / 1000)).toBeLessThan(60);

    const done = await poll(client, created.id);
    expect(done.status).toBe("completed");
    expect(done.request_counts).toEqual({ total: 20, completed: 18, failed: 2 });
    expect(done.completed_at).toBeGreaterThanOrEqual(done.created_at);
    expect(done.output_file_id).toBeTruthy();
    expect(done.error_file_id).toBeTruthy();

    const output = (await (await client.files.content(done.output_file_id!)).text())
      .trim()
      .split("\n");
    const errors = (await (await client.files.content(done.error_file_id!)).text())
      .trim()
      .split("\n");
    const seen = [...output, ...errors].map((l) => JSON.parse(l).custom_id as string);
    expect(seen.sort()).toEqual([...ids].sort());
    expect(errors.map((l) => JSON.parse(l).custom_id).sort()).toEqual(["q3", "q7"]);
    expect(JSON.parse(errors[0]!).response.status_code).toBe(400);
    expect(JSON.parse(output[0]!).response.status_code).toBe(200);
    // The route's key went upstream.
    expect(upstream.of("q1")[0]!.authorization).toBe("Bearer sk-upstream");
    const outFile = await client.files.retrieve(done.output_file_id!);
    expect(outFile).toMatchObject({ purpose: "batch_output", object: "file" });
  });

  test("list with pagination: newest first, after and limit, has_more", async () => {
    const client = sdk(local.url);
    const file = await upload(client, jsonl(["p1"]));
    const made: string[] = [];
    for (let i = 0; i < 3; i++) {
      const b = await client.batches.create({
        input_file_id: file.id,
        endpoint: "/v1/chat/completions",
        completion_window: "24h",
      });
      made.push(b.id);
    }
    const first = await client.batches.list({ limit: 2 });
    expect(first.data.map((b) => b.id)).toEqual([made[2], made[1]]);
    expect(first.has_more).toBe(true);
    const second = await client.batches.list({ limit: 2, after: made[1] });
    expect(second.data[0]!.id).toBe(made[0]);
    // The SDK's auto-pagination walks every page.
    const all: string[] = [];
    for await (const b of client.batches.list({ limit: 2 })) all.push(b.id);
    expect(all.slice(0, 3)).toEqual([made[2], made[1], made[0]]);
    expect(new Set(all).size).toBe(all.length);
    const files = await client.files.list();
    expect(files.data.map((f) => f.id)).toContain(file.id);
  });

  test("cancel; extensions through extra_body; error statuses", async () => {
    const client = sdk(local.url);
    upstream.script("slow", [{ hang: true }]);
    const file = await upload(client, jsonl(["slow"], "gpt-slow"));
    const b = await client.batches.create({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
    });
    await client.batches.cancel(b.id);
    const cancelled = await poll(client, b.id);
    expect(cancelled.status).toBe("cancelled");
    expect(cancelled.cancelling_at).not.toBeNull();
    await expect(client.batches.cancel(b.id)).resolves.toMatchObject({ status: "cancelled" });

    // Fusillade's extensions: the TypeScript SDK sends extra fields as they are
    // (Python: extra_body={...}).
    const extended = (await client.batches.create({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "2h",
      priority: 7,
      max_retries: 2,
    } as unknown as OpenAI.Batches.BatchCreateParams)) as unknown as {
      priority: number;
      max_retries: number;
      id: string;
    };
    expect(extended).toMatchObject({ priority: 7, max_retries: 2 });
    await client.batches.cancel(extended.id);

    await expect(
      client.batches.retrieve("00000000-0000-4000-8000-000000000000"),
    ).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(
      client.batches.create({
        input_file_id: file.id,
        endpoint: "/v1/embeddings",
        completion_window: "24h",
      }),
    ).rejects.toMatchObject({ status: 400, param: "endpoint" });
    await expect(upload(client, "{not json")).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    const big = jsonl(Array.from({ length: 1000 }, (_, i) => `big-${i}`));
    expect(big.length).toBeGreaterThan(64 * 1024);
    await expect(upload(client, big)).rejects.toMatchObject({ status: 413 });
    await expect(
      client.files.create({
        file: await toFile(Buffer.from(jsonl(["x"])), "x.jsonl"),
        purpose: "fine-tune",
      }),
    ).rejects.toMatchObject({ status: 400, param: "purpose" });
    // A completed batch cannot be cancelled: 409.
    const done = await client.batches.create({
      input_file_id: (await upload(client, jsonl(["fast"]))).id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
    });
    await poll(client, done.id);
    await expect(client.batches.cancel(done.id)).rejects.toBeInstanceOf(OpenAI.ConflictError);
  });

  test("output_expires_after: the output file expires that long after the batch finished; bad values are 400", async () => {
    const client = sdk(local.url);
    const file = await upload(client, jsonl(["exp-1", "exp-2"]));
    const b = await client.batches.create({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
      output_expires_after: { anchor: "created_at", seconds: 7_200 },
    });
    const done = await poll(client, b.id);
    expect(done.status).toBe("completed");
    const out = await client.files.retrieve(done.output_file_id!);
    // Made when the batch finished; gone two hours later, with the batch.
    expect(out.created_at).toBe(done.completed_at);
    expect(out.expires_at).toBe(done.completed_at! + 7_200);
    // The server's retention (30 days) when the batch names none.
    const plain = await poll(
      client,
      (
        await client.batches.create({
          input_file_id: file.id,
          endpoint: "/v1/chat/completions",
          completion_window: "24h",
        })
      ).id,
    );
    const plainOut = await client.files.retrieve(plain.output_file_id!);
    expect(plainOut.expires_at).toBe(plain.completed_at! + 30 * 86_400);

    const create = (extra: Record<string, unknown>) =>
      client.batches.create({
        input_file_id: file.id,
        endpoint: "/v1/chat/completions",
        completion_window: "24h",
        ...extra,
      } as unknown as OpenAI.Batches.BatchCreateParams);
    await expect(
      create({ output_expires_after: { anchor: "created_at", seconds: 60 } }),
    ).rejects.toMatchObject({ status: 400, param: "output_expires_after.seconds" });
    await expect(
      create({ output_expires_after: { anchor: "completed_at", seconds: 7_200 } }),
    ).rejects.toMatchObject({ status: 400, param: "output_expires_after.anchor" });
    await expect(
      create({ output_expires_after: { anchor: "created_at", seconds: 7_200 }, retention: "1d" }),
    ).rejects.toMatchObject({ status: 400, param: "retention" });
  });
});

describe("token mode", () => {
  let secure: TestControlPlane;
  let tokenA: string;
  let tokenB: string;
  beforeAll(async () => {
    secure = await startTestControlPlane({ adminToken: ADMIN });
    await secure.admin.setRoute({ model: "*", endpoint: "http://upstream.test" });
    tokenA = (await secure.admin.createToken({ role: TokenRole.CLIENT, tenant: "a" })).secret;
    tokenB = (await secure.admin.createToken({ role: TokenRole.CLIENT, tenant: "b" })).secret;
  });
  afterAll(async () => {
    await secure?.close();
  });

  test("a bad key is 401; another tenant's ids are 404; a dispatcher token is 403", async () => {
    await expect(sdk(secure.url, "not-a-token").batches.list()).rejects.toBeInstanceOf(
      OpenAI.AuthenticationError,
    );
    const a = sdk(secure.url, tokenA);
    const b = sdk(secure.url, tokenB);
    const file = await upload(a, jsonl(["t1"]));
    const batch = await a.batches.create({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
    });
    await expect(b.files.retrieve(file.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(b.files.content(file.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(b.batches.retrieve(batch.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(b.files.content(`errors-${batch.id}`)).rejects.toBeInstanceOf(
      OpenAI.NotFoundError,
    );
    await expect(b.batches.cancel(batch.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(
      b.batches.create({
        input_file_id: file.id,
        endpoint: "/v1/chat/completions",
        completion_window: "24h",
      }),
    ).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    expect((await b.batches.list()).data).toEqual([]);
    expect((await a.batches.list()).data.map((x) => x.id)).toEqual([batch.id]);
    const disp = (await secure.admin.createToken({ role: TokenRole.DISPATCHER })).secret;
    await expect(sdk(secure.url, disp).batches.list()).rejects.toBeInstanceOf(
      OpenAI.PermissionDeniedError,
    );
  });
});
