/**
 * `fusillade serve` as a real process on its embedded Postgres, tried at its edge: a
 * request Connect's adapter cannot read does not end it, and when it does end without a
 * clean stop (a second SIGTERM while its dispatcher waits for a request in flight), its
 * embedded Postgres goes with it instead of being left running.
 */
import { once } from "node:events";
import { chmod, mkdtemp, readFile, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, test } from "vitest";
import { stopStaleServer } from "../../src/storage/embedded-postgres.js";
import { clients } from "../helpers/control-plane.js";
import {
  createTestBatch,
  type FusilladeProcess,
  items,
  spawnFusillade,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

let dataDir: string;
let upstream: Upstream;
let serve: FusilladeProcess | undefined;

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), "fusillade-test-serve-edge-"));
  // As root, Postgres runs as `nobody`, which must get through mkdtemp's 0700.
  await chmod(dataDir, 0o755);
  upstream = await startUpstream();
});
afterAll(async () => {
  if (serve) {
    serve.child.kill("SIGKILL");
    await serve.exited;
  }
  await stopStaleServer(path.join(dataDir, "pg")).catch(() => {});
  await upstream?.close();
  await rm(dataDir, { recursive: true, force: true });
});

/** Whether a process `pid` runs (signal 0 probes without sending anything). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Sends raw bytes and reads until the server closes: what it answered. */
async function rawExchange(port: number, bytes: string): Promise<string> {
  const socket = net.connect(port, "127.0.0.1");
  let text = "";
  socket.setEncoding("utf8");
  socket.on("data", (d: string) => {
    text += d;
  });
  socket.on("error", () => undefined);
  await once(socket, "connect");
  socket.write(bytes);
  await once(socket, "close");
  return text;
}

test("a request without Host is answered 400; SIGTERM twice stops the embedded Postgres too", async () => {
  serve = spawnFusillade(
    ["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--shutdown-grace", "60s"],
    { FUSILLADE_LOG_LEVEL: "info", DATABASE_URL: "" },
  );
  const [, url] = await serve.waitFor(/serving on (http:\/\/\S+)/, 60_000);
  const port = Number(new URL(url!).port);
  const postmaster = Number(
    (await readFile(path.join(dataDir, "pg", "postmaster.pid"), "utf8")).split("\n")[0],
  );
  expect(running(postmaster)).toBe(true);

  // HTTP/1.0 may omit Host: Connect's adapter threw on that outside any promise, and the
  // process exited (leaving its Postgres running).
  const answer = await rawExchange(
    port,
    "POST /grpc.health.v1.Health/Check HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
  );
  expect(answer).toMatch(/^HTTP\/1\.1 400 /);
  const { batch } = clients(url!);
  const health = await fetch(`${url}/grpc.health.v1.Health/Check`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "{}",
  });
  expect(health.status).toBe(200);

  // A request in flight that never answers: the first SIGTERM's stop waits for it (grace
  // 60 s); the second exits at once, through process.exit, with no clean stop.
  upstream.respond = () => ({ hang: true });
  await createTestBatch(batch, upstream.url, items("M", 1));
  await upstream.until(() => upstream.deliveries.length >= 1, 30_000, "the delivery");
  serve.child.kill("SIGTERM");
  await serve.waitFor(/dispatcher stopping/, 20_000);
  serve.child.kill("SIGTERM");
  const exit = await serve.exited;
  expect(exit.code).toBe(130);
  // Postgres' fast shutdown takes it a moment: wait for the process to go.
  const deadline = Date.now() + 30_000;
  while (running(postmaster) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  expect(running(postmaster)).toBe(false);
  // initdb and a first start take most of a minute on a loaded 2-core machine.
}, 180_000);
