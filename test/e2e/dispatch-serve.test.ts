/**
 * `fusillade serve`: a control plane and a dispatcher in one process on an
 * embedded Postgres kept under --data-dir. A batch runs to completion across
 * a stop (SIGTERM) and a start: the second run resumes what the first left.
 */
import { chmod, mkdtemp, rm } from "node:fs/promises";
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
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

let dataDir: string;
let upstream: Upstream;
let serve: FusilladeProcess | undefined;

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), "fusillade-test-serve-"));
  // As root, Postgres runs as `nobody`, which must get through mkdtemp's 0700.
  await chmod(dataDir, 0o755);
  upstream = await startUpstream();
});
afterAll(async () => {
  if (serve) {
    serve.child.kill("SIGTERM");
    const timer = setTimeout(() => serve?.child.kill("SIGKILL"), 10_000);
    await serve.exited;
    clearTimeout(timer);
  }
  await stopStaleServer(path.join(dataDir, "pg")).catch(() => {});
  await upstream?.close();
  await rm(dataDir, { recursive: true, force: true });
});

async function startServe(): Promise<string> {
  serve = spawnFusillade(
    [
      "serve",
      "--listen",
      "127.0.0.1:0",
      "--data-dir",
      dataDir,
      "--default-limit",
      "3",
      "--capacity",
      "8",
    ],
    { FUSILLADE_LOG_LEVEL: "warn", DATABASE_URL: "" },
  );
  const [, url] = await serve.waitFor(/serving on (http:\/\/\S+)/, 60_000);
  return url!;
}

test("serve runs a batch; stopped and started again, it resumes and finishes it", async () => {
  upstream.respond = () => ({ delayMs: 100 });
  const url1 = await startServe();
  const batchId = await createTestBatch(clients(url1).batch, upstream.url, items("M", 30));
  await upstream.until(() => upstream.deliveries.length >= 6, 20_000, "6 deliveries");

  const exit = await serve!.stop("SIGTERM");
  expect(exit).toEqual({ code: 0, signal: null });
  const before = upstream.deliveries.length;
  expect(before).toBeLessThan(30);

  const url2 = await startServe();
  const status = await waitForBatch(clients(url2).batch, batchId, 30_000);
  expect(Number(status.counts!.completed)).toBe(30);
  expect(new Set(upstream.deliveries.map((d) => d.customId)).size).toBe(30);
  // The default limit (3) held across both runs.
  expect(upstream.gauge("M").peak).toBe(3);
  console.log(
    `serve: ${before} deliveries in the first run, ${upstream.deliveries.length - before} in the second`,
  );
});
