/**
 * Fault: Postgres stopped and started again mid-batch (an embedded server of
 * this file's own, on a fixed port; never the machine's), for longer than a
 * lease. While it is down, API calls fail with UNAVAILABLE; the control plane
 * and dispatchers stay up, and once it is back they carry on without anyone
 * restarting them.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import type pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import {
  batchItems,
  Fleet,
  FULL,
  LEASE_TTL_MS,
  OwnPostgres,
  pool,
  unexpectedExits,
} from "../fleet.js";
import { verifyBatch } from "../verify.js";

const N = FULL ? 3000 : 300;
let postgres: OwnPostgres;
let fleet: Fleet;
let sql: pg.Pool;

beforeAll(async () => {
  postgres = await OwnPostgres.start();
  sql = pool(postgres.url);
  await Fleet.start({ controlPlane: { kind: "control-plane", databaseUrl: postgres.url } }, (f) => {
    fleet = f; // at once: afterAll closes it even if this hook times out
  });
});
afterAll(async () => {
  await fleet?.close();
  await sql?.end();
  await postgres?.close();
});

test("Postgres restarted mid-batch: UNAVAILABLE meanwhile, no process restarted, nothing lost", async () => {
  const { upstream } = fleet;
  const items = batchItems(N);
  const startedAt = Date.now();
  const batchId = await fleet.createBatch(items);

  await upstream.until(() => upstream.deliveries.length >= N * 0.3, 60_000, "30 % delivered");
  await postgres.stop();
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
  await postgres.start();
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
