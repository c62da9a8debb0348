/**
 * Upstream API keys at rest and in flight (docs/trust.md): stored encrypted,
 * rotated with `fusillade secrets rotate`, decrypted only into a claim; a batch
 * against an upstream that echoes request headers leaves the key in no log
 * line, no API response and no result line.
 */
import { randomBytes } from "node:crypto";
import { toJson } from "@bufbuild/protobuf";
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import { Keyring, keyIdOf } from "../../src/auth/secrets.js";
import {
  GetBatchResponseSchema,
  ListBatchRequestsResponseSchema,
} from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { clients } from "../helpers/control-plane.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import {
  type FusilladeProcess,
  spawnFusillade,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const KEY = `sk-live-${randomBytes(12).toString("hex")}`;
const K1 = randomBytes(32).toString("base64");
const K2 = randomBytes(32).toString("base64");
let db: TestDatabase;
let sql: pg.Pool;
let upstream: Upstream;
const procs: FusilladeProcess[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  sql = new pg.Pool({ connectionString: db.url, max: 2 });
  upstream = await startUpstream();
  // An upstream that echoes what it was sent, credentials included.
  upstream.respond = (d) => ({
    body: JSON.stringify({ echoed: d.authorization, note: `key ${d.authorization}` }),
  });
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop("SIGKILL")));
  await upstream?.close();
  await sql?.end();
  await db?.drop();
});

async function controlPlane(
  env: Record<string, string>,
): Promise<{ p: FusilladeProcess; url: string }> {
  const p = spawnFusillade(["control-plane", "--listen", "127.0.0.1:0"], {
    DATABASE_URL: db.url,
    FUSILLADE_LOG_LEVEL: "debug",
    ...env,
  });
  procs.push(p);
  const [, url] = await p.waitFor(/control plane listening on (http:\/\/\S+)/, 60_000);
  return { p, url: url! };
}

async function batchOf(url: string, n: number, tag: string) {
  const c = clients(url);
  const jsonl = Array.from({ length: n }, (_, i) =>
    JSON.stringify({
      custom_id: `${tag}-${i}`,
      method: "POST",
      url: "/v1/x",
      body: { model: "sec" },
    }),
  ).join("\n");
  const file = await c.batch.createFile({
    jsonl: new TextEncoder().encode(jsonl),
    endpoint: upstream.url,
    apiKey: KEY,
  });
  return { c, fileId: file.file!.id };
}

test("rotation, a missing key, and a header-echoing upstream: the key is used upstream and seen nowhere else", async () => {
  // 1. Stored under K1.
  const first = await controlPlane({ FUSILLADE_SECRET_KEY: K1 });
  const { fileId } = await batchOf(first.url, 5, "r");
  const stored = await sql.query("SELECT key_id, sealed FROM api_keys");
  expect(stored.rows).toEqual([
    { key_id: keyIdOf(Buffer.from(K1, "base64")), sealed: expect.any(Buffer) },
  ]);
  expect(stored.rows[0].sealed.includes(Buffer.from(KEY))).toBe(false);
  await first.p.stop("SIGTERM");

  // 2. Rotate to K2 with K1 as the previous key.
  const rotate = spawnFusillade(["secrets", "rotate", "--database-url", db.url], {
    FUSILLADE_SECRET_KEY: K2,
    FUSILLADE_PREVIOUS_SECRET_KEYS: K1,
  });
  expect((await rotate.exited).code).toBe(0);
  const after = await sql.query("SELECT DISTINCT key_id FROM api_keys");
  expect(after.rows).toEqual([{ key_id: new Keyring(Buffer.from(K2, "base64")).currentId }]);

  // 3. A control plane with K2 only, and a dispatcher: the batch runs with the key.
  const second = await controlPlane({ FUSILLADE_SECRET_KEY: K2 });
  const d = spawnFusillade(["dispatcher", "--control-plane", second.url, "--id", "sec-d"], {
    FUSILLADE_LOG_LEVEL: "debug",
  });
  procs.push(d);
  const c = clients(second.url);
  const batch = (await c.batch.createBatch({ fileId })).batch!;
  const status = await waitForBatch(c.batch, batch.id, 30_000);
  expect(Number(status.counts!.completed)).toBe(5);
  expect(upstream.deliveries.every((x) => x.authorization === `Bearer ${KEY}`)).toBe(true);

  // Nowhere else: stored bodies, API responses, result lines, logs.
  const bodies = await sql.query("SELECT convert_from(response_body, 'UTF8') AS b FROM requests");
  for (const r of bodies.rows) {
    expect(r.b).not.toContain(KEY);
    expect(r.b).toContain("[redacted]");
  }
  const seen: string[] = [];
  seen.push(
    JSON.stringify(toJson(GetBatchResponseSchema, await c.batch.getBatch({ batchId: batch.id }))),
  );
  seen.push(
    JSON.stringify(
      toJson(
        ListBatchRequestsResponseSchema,
        await c.batch.listBatchRequests({ batchId: batch.id }),
      ),
    ),
  );
  for await (const m of c.batch.getBatchResults({ batchId: batch.id })) seen.push(m.line);
  for await (const m of c.batch.streamBatchRequests({ batchId: batch.id }))
    seen.push(JSON.stringify(m.request?.response ?? {}));
  expect(seen.length).toBeGreaterThan(10);
  for (const s of seen) expect(s).not.toContain(KEY);
  for (const p of procs) expect(p.stderr()).not.toContain(KEY);
  expect(d.stderr()).toMatch(/"level":20.*request done/); // debug lines were written, and checked

  // 4. A control plane without the key: the requests fail, saying which key is missing.
  await d.stop("SIGTERM");
  await second.p.stop("SIGTERM");
  const third = await controlPlane({ FUSILLADE_SECRET_KEY: randomBytes(32).toString("base64") });
  const d3 = spawnFusillade(["dispatcher", "--control-plane", third.url, "--id", "sec-d3"]);
  procs.push(d3);
  const c3 = clients(third.url);
  const b3 = (await c3.batch.createBatch({ fileId })).batch!;
  const s3 = await waitForBatch(c3.batch, b3.id, 30_000);
  expect(Number(s3.counts!.failed)).toBe(5);
  const failed = await sql.query(
    "SELECT DISTINCT error_code, error_message FROM requests WHERE batch_id = $1",
    [b3.id],
  );
  expect(failed.rows).toHaveLength(1);
  expect(failed.rows[0].error_code).toBe("secret_unavailable");
  expect(failed.rows[0].error_message).toContain(new Keyring(Buffer.from(K2, "base64")).currentId);
});
