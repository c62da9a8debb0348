/**
 * Fault: SIGKILL of the control plane, split from its dispatchers
 * (`fusillade control-plane` + three `fusillade dispatcher`), twice over a
 * batch: once started again at once, once only after the dispatchers have
 * run out of work they could do without it. Dispatchers keep their finished
 * outcomes and report them to the new process; claims they could not renew
 * fence themselves and come back when their leases expire.
 */
import { expect, test } from "vitest";
import { batchItems, Fleet, FULL, unexpectedExits, useFleetOnTestDatabase } from "../fleet.js";
import { verifyBatch } from "../verify.js";

const N = FULL ? 3000 : 300;
const ctx = useFleetOnTestDatabase();

test("the control plane SIGKILLed twice mid-batch and started again: nothing lost, nothing recorded twice, limits held", async () => {
  const { fleet, sql } = ctx;
  const { upstream } = fleet;
  const items = batchItems(N);
  const startedAt = Date.now();
  const batchId = await fleet.createBatch(items);
  const downMs: number[] = [];

  await upstream.until(() => upstream.deliveries.length >= N * 0.3, 60_000, "30 % delivered");
  await Fleet.kill(fleet.controlPlane);
  let downAt = Date.now();
  await fleet.startControlPlane();
  downMs.push(Date.now() - downAt);

  await upstream.until(() => upstream.deliveries.length >= N * 0.6, 60_000, "60 % delivered");
  await Fleet.kill(fleet.controlPlane);
  downAt = Date.now();
  // Down until the dispatchers have finished (or fenced) everything they held.
  await upstream.until(() => upstream.inFlight === 0, 10_000, "the fleet to run dry");
  const deliveredWhileDown = upstream.deliveries.length;
  await fleet.startControlPlane();
  downMs.push(Date.now() - downAt);

  await verifyBatch({
    scenario: "control plane SIGKILL x2 (split processes)",
    api: fleet.api,
    sql,
    upstream,
    batchId,
    items,
    startedAt,
    onStuck: () => fleet.dumpDispatchers(),
    extra: { downMs, deliveredBeforeSecondRestart: deliveredWhileDown },
  });
  expect(unexpectedExits([...fleet.dispatchers, fleet.controlPlane])).toEqual([]);
});
