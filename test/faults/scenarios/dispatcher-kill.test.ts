/**
 * Fault: SIGKILL of a dispatcher, three times over a batch, each restarted at
 * once under the same id (as a supervisor would). Its requests' sockets close
 * with it; its claims and slots come back when their leases expire.
 */
import { expect, test } from "vitest";
import {
  batchItems,
  FULL,
  signalWhenBusy,
  unexpectedExits,
  useFleetOnTestDatabase,
} from "../fleet.js";
import { verifyBatch } from "../verify.js";

const N = FULL ? 3000 : 300;
const ctx = useFleetOnTestDatabase();

test("a dispatcher SIGKILLed three times mid-batch: nothing lost, nothing recorded twice, limits held", async () => {
  const { fleet, sql } = ctx;
  const { upstream } = fleet;
  const items = batchItems(N);
  const startedAt = Date.now();
  const batchId = await fleet.createBatch(items);
  const killedInFlight: number[] = [];
  for (const [victim, share] of [
    [0, 0.15],
    [1, 0.4],
    [2, 0.65],
  ] as const) {
    await upstream.until(
      () => upstream.deliveries.length >= N * share,
      60_000,
      `${share * 100} % of the deliveries`,
    );
    const p = fleet.dispatchers[victim]!;
    const { held } = await signalWhenBusy(upstream, p, "SIGKILL");
    killedInFlight.push(held.length);
    await p.exited;
    await fleet.startDispatcher(victim);
  }
  await verifyBatch({
    scenario: "dispatcher SIGKILL x3",
    api: fleet.api,
    sql,
    upstream,
    batchId,
    items,
    startedAt,
    extra: { killedInFlight },
  });
  expect(unexpectedExits([...fleet.dispatchers, fleet.controlPlane])).toEqual([]);
});
