/**
 * Fault: Postgres stopped and started again mid-batch (an embedded server of
 * this file's own, on a fixed port; never the machine's). While it is down,
 * API calls fail with UNAVAILABLE; the control plane and dispatchers stay up,
 * and once it is back they carry on without anyone restarting them.
 */
import { chmod, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import type pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import {
  type EmbeddedPostgres,
  startEmbeddedPostgres,
} from "../../src/storage/embedded-postgres.js";
import { batchItems, FULL, Fleet, freePort, LEASE_TTL_MS, pool, unexpectedExits } from "./fleet.js";
import { verifyBatch } from "./verify.js";

const N = FULL ? 3000 : 300;
let tmp: string;
let port: number;
let server: EmbeddedPostgres | undefined;
let fleet: Fleet;
let sql: pg.Pool;

function startPostgres(): Promise<EmbeddedPostgres> {
  return startEmbeddedPostgres({ dataDir: path.join(tmp, "pg"), port, ephemeral: true });
}

beforeAll(async () => {
  // Named like global-setup's dirs: a later run stops a server left here by a killed run.
  tmp = await mkdtemp(path.join(os.tmpdir(), `fusillade-test-${process.pid}-`));
  await chmod(tmp, 0o755); // as root, Postgres runs as `nobody`
  port = await freePort();
  server = await startPostgres();
  sql = pool(server.url);
  fleet = await Fleet.start({ controlPlane: { kind: "control-plane", databaseUrl: server.url } });
});
afterAll(async () => {
  await fleet?.close();
  await sql?.end();
  await server?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

test("Postgres restarted mid-batch: UNAVAILABLE meanwhile, no process restarted, nothing lost", async () => {
  const { upstream } = fleet;
  const items = batchItems(N);
  const startedAt = Date.now();
  const batchId = await fleet.createBatch(items);

  await upstream.until(() => upstream.deliveries.length >= N * 0.3, 60_000, "30 % delivered");
  await server!.stop(); // pg_ctl stop -m fast: every connection is closed
  server = undefined;
  const downAt = Date.now();
  const during = await fleet.api.batch.getBatchStatus({ batchId }).then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
  expect(during?.code, String(during)).toBe(Code.Unavailable);
  // Down until the dispatchers have finished (or fenced) everything they held…
  await upstream.until(() => upstream.inFlight === 0, 10_000, "the fleet to run dry");
  // …and for longer than a lease: the outage's length is the fault itself, not a wait for an event.
  await sleep(LEASE_TTL_MS + 1000);
  expect(unexpectedExits([...fleet.dispatchers, fleet.controlPlane])).toEqual([]);
  server = await startPostgres();
  const downMs = Date.now() - downAt;

  await verifyBatch({
    scenario: "Postgres restart (stop, start on the same port)",
    api: fleet.api,
    sql,
    upstream,
    batchId,
    items,
    startedAt,
    extra: { downMs, apiWhileDown: Code[during!.code] },
  });
  expect(unexpectedExits([...fleet.dispatchers, fleet.controlPlane])).toEqual([]);
});
