/**
 * TLS on the API port (docs/trust.md): h2 and HTTP/1.1 over one TLS port; the
 * CLI and a dispatcher trust it through --ca; `serve` with TLS and an admin
 * token runs a batch through its own dispatcher thread. The certificate is
 * made at test time.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { ConnectError } from "@connectrpc/connect";
import { generate } from "selfsigned";
import { afterAll, beforeAll, expect, test } from "vitest";
import type { Dispatcher } from "../../src/dispatcher/dispatcher.js";
import { parseAllowList } from "../../src/domain/endpoints.js";
import { clients, startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import {
  createTestBatch,
  type FusilladeProcess,
  items,
  spawnFusillade,
  startTestDispatcher,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const ADMIN = "tls-admin-token-0123456789abcdef";
const LOOPBACK = "http://127.0.0.1:*";
let dir: string;
let cert: string;
let key: string;
let t: TestControlPlane;
let upstream: Upstream;
let dispatcher: Dispatcher | undefined;
let serve: FusilladeProcess | undefined;
let serveDb: TestDatabase | undefined;

beforeAll(async () => {
  const pems = await generate([{ name: "commonName", value: "localhost" }], {
    keySize: 2048,
    extensions: [
      {
        name: "subjectAltName",
        altNames: [
          { type: 2, value: "localhost" },
          { type: 7, ip: "127.0.0.1" },
        ],
      },
    ],
  });
  cert = pems.cert;
  key = pems.private;
  dir = await mkdtemp(path.join(os.tmpdir(), "fusillade-tls-"));
  await writeFile(path.join(dir, "cert.pem"), cert);
  await writeFile(path.join(dir, "key.pem"), key, { mode: 0o600 });
  // With tokens, a loopback upstream must be listed (docs/trust.md, "Outbound policy").
  t = await startTestControlPlane({
    tls: { cert, key },
    adminToken: ADMIN,
    allowedEndpoints: parseAllowList(LOOPBACK, "test"),
  });
  upstream = await startUpstream();
});
afterAll(async () => {
  await dispatcher?.stop(0);
  await serve?.stop("SIGKILL");
  await serveDb?.drop();
  await upstream?.close();
  await t?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("the port speaks TLS: h2 and HTTP/1.1 with the CA; a client that does not trust it is refused", async () => {
  expect(t.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
  const h2 = clients(t.url, "connect-h2", ADMIN, cert);
  expect((await h2.admin.listModelLimits({})).defaultLimit).toBeGreaterThan(0);
  const h1 = clients(t.url, "connect-h1", ADMIN, cert);
  expect((await h1.admin.listModelLimits({})).defaultLimit).toBeGreaterThan(0);
  const untrusting = clients(t.url, "connect-h2", ADMIN);
  const e = await untrusting.admin.listModelLimits({}).catch((x) => ConnectError.from(x));
  expect(e).toBeInstanceOf(ConnectError);
  expect((e as ConnectError).rawMessage).toMatch(/certificate/);
  // Health over HTTP/1.1 + TLS with Node's own client.
  const status = await new Promise<number>((resolve, reject) => {
    const req = https.request(
      `${t.url}/grpc.health.v1.Health/Check`,
      { method: "POST", ca: cert, headers: { "content-type": "application/json" } },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on("error", reject);
    req.end("{}");
  });
  expect(status).toBe(200);
});

test("the CLI reaches it with --ca and --token; without --ca it fails with a message", async () => {
  const ok = spawnFusillade(
    ["--server", t.url, "--ca", path.join(dir, "cert.pem"), "limits", "list"],
    { FUSILLADE_TOKEN: ADMIN },
  );
  expect((await ok.exited).code).toBe(0);
  const noCa = spawnFusillade(["--server", t.url, "limits", "list"], { FUSILLADE_TOKEN: ADMIN });
  expect((await noCa.exited).code).toBe(1);
  expect(noCa.stderr()).toMatch(/certificate/i);
});

test("a dispatcher with --ca and a dispatcher token runs a batch over TLS", async () => {
  const made = await t.admin.createToken({ role: 2 /* DISPATCHER */ });
  dispatcher = startTestDispatcher(t.url, { id: "tls-d", token: made.secret, ca: cert });
  const batchId = await createTestBatch(t.batch, upstream.url, items("tls-m", 20));
  const status = await waitForBatch(t.batch, batchId, 30_000);
  expect(Number(status.counts!.completed)).toBe(20);
});

test("serve with TLS and an admin token runs a batch through its own dispatcher", async () => {
  serveDb = await createTestDatabase();
  serve = spawnFusillade(
    [
      "serve",
      "--listen",
      "127.0.0.1:0",
      "--tls-cert",
      path.join(dir, "cert.pem"),
      "--tls-key",
      path.join(dir, "key.pem"),
      // Its control plane and its dispatcher thread both take the list.
      "--allowed-endpoints",
      LOOPBACK,
    ],
    { FUSILLADE_LOG_LEVEL: "warn", DATABASE_URL: serveDb.url, FUSILLADE_ADMIN_TOKEN: ADMIN },
  );
  const [, url] = await serve.waitFor(/serving on (https:\/\/\S+)/, 60_000);
  const c = clients(url!, "connect-h2", ADMIN, cert);
  const batchId = await createTestBatch(c.batch, upstream.url, items("tls-serve", 10));
  const status = await waitForBatch(c.batch, batchId, 30_000);
  expect(Number(status.counts!.completed)).toBe(10);
});
