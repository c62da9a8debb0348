/**
 * Fault: SIGKILL of `fusillade serve` (control plane, its own dispatcher and
 * an embedded Postgres it started, which outlives it) with two more
 * dispatcher processes attached, mid-batch; started again on the same data
 * dir, it takes over the orphaned Postgres and the batch completes.
 */
import { chmod, mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, test } from "vitest";
import { stopStaleServer } from "../../../src/storage/embedded-postgres.js";
import { batchItems, Fleet, FULL, pool, unexpectedExits } from "../fleet.js";
import { verifyBatch } from "../verify.js";

const N = FULL ? 3000 : 300;
let dataDir: string;
let fleet: Fleet;

beforeAll(async () => {
  // Named like global-setup's dirs: a later run stops a server left here by a killed run.
  dataDir = await mkdtemp(path.join(os.tmpdir(), `fusillade-test-${process.pid}-`));
  await chmod(dataDir, 0o755); // as root, Postgres runs as `nobody`
  await Fleet.start({ controlPlane: { kind: "serve", dataDir }, dispatchers: 2 }, (f) => {
    fleet = f; // at once: afterAll closes it even if this hook times out
  });
});
afterAll(async () => {
  await fleet?.close();
  if (dataDir) {
    await stopStaleServer(path.join(dataDir, "pg")).catch(() => {});
    await rm(dataDir, { recursive: true, force: true });
  }
});

/**
 * The URL of serve's embedded Postgres now: its port is picked at each start
 * (postmaster.pid, line 4), its password is kept in the data dir.
 */
async function embeddedUrl(): Promise<string> {
  const pid = await readFile(path.join(dataDir, "pg", "postmaster.pid"), "utf8");
  const port = Number(pid.split("\n")[3]);
  const password = (await readFile(path.join(dataDir, "pg", "fusillade.password"), "utf8")).trim();
  return `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/fusillade`;
}

test("serve SIGKILLed mid-batch and started again: nothing lost, nothing recorded twice, limits held", async () => {
  const { upstream } = fleet;
  const items = batchItems(N);
  const startedAt = Date.now();
  const batchId = await fleet.createBatch(items);

  await upstream.until(() => upstream.deliveries.length >= N * 0.3, 60_000, "30 % delivered");
  const killed = fleet.controlPlane!;
  await Fleet.kill(killed);
  const downAt = Date.now();
  await fleet.startControlPlane();
  const downMs = Date.now() - downAt;
  // The orphaned Postgres was found and stopped, then started again by the new process.
  expect(fleet.controlPlane!.stderr()).not.toMatch(/"level":(50|60)/);

  const sql = pool(await embeddedUrl());
  try {
    await verifyBatch({
      scenario: "serve SIGKILL (embedded Postgres orphaned, taken over)",
      api: fleet.api,
      sql,
      upstream,
      batchId,
      items,
      startedAt,
      onStuck: () => fleet.dumpDispatchers(),
      extra: { downMs },
    });
  } finally {
    await sql.end();
  }
  expect(unexpectedExits([...fleet.dispatchers, fleet.controlPlane])).toEqual([]);
});
