/**
 * Fault: a dispatcher SIGSTOPped mid-batch with requests in flight, for
 * longer than its leases (until the upstream has seen every one of them
 * sent again by another dispatcher), then SIGCONT. A paused process can
 * neither renew nor fence, so the control plane's side must hold: its slots
 * expire before they are granted again (the limit holds at the upstream),
 * and when it wakes up, what it finished is not recorded (its claims are
 * gone; the requests were sent again, and their later outcome is the one kept).
 */
import { setTimeout as sleep } from "node:timers/promises";
import { expect, test } from "vitest";
import {
  batchItems,
  FULL,
  LEASE_TTL_MS,
  signalWhenBusy,
  unexpectedExits,
  useFleetOnTestDatabase,
} from "../fleet.js";
import { verifyBatch } from "../verify.js";

const N = FULL ? 3000 : 300;
const ctx = useFleetOnTestDatabase((fleet) => {
  const victim = fleet.dispatchers[1];
  if (victim && victim.child.exitCode === null) victim.child.kill("SIGCONT");
});

test("a dispatcher SIGSTOPped longer than its leases, then SIGCONT: its fenced work is not recorded, the limit held", async () => {
  const { fleet, sql } = ctx;
  const { upstream } = fleet;
  const victim = fleet.dispatchers[1]!;
  const items = batchItems(N);
  const startedAt = Date.now();
  const batchId = await fleet.createBatch(items);
  await upstream.until(() => upstream.deliveries.length >= N * 0.3, 60_000, "30 % delivered");

  // Pause it while the upstream has requests of it in flight.
  const { held, ports, at: stoppedAt } = await signalWhenBusy(upstream, victim, "SIGSTOP");
  expect(held.length, "the paused dispatcher had nothing in flight").toBeGreaterThan(0);
  const heldIds = new Set(held.map((d) => d.requestId));

  // Every request it had in flight is sent again by another dispatcher: its claims expired.
  await upstream.until(
    () =>
      [...heldIds].every((id) =>
        upstream.deliveries.some((d) => d.requestId === id && !ports.has(d.remotePort)),
      ),
    30_000,
    "the paused dispatcher's requests to be sent again by others",
  );
  // Paused for longer than a lease in any case (the pause's length is the fault itself).
  const left = stoppedAt + LEASE_TTL_MS + 500 - Date.now();
  if (left > 0) await sleep(left);
  victim.child.kill("SIGCONT");
  const pausedMs = Date.now() - stoppedAt;

  const { lines } = await verifyBatch({
    scenario: "dispatcher SIGSTOP > lease TTL, then SIGCONT",
    api: fleet.api,
    sql,
    upstream,
    batchId,
    items,
    startedAt,
    onStuck: () => fleet.dumpDispatchers(),
    extra: { pausedMs, victimInFlightAtStop: held.length },
  });

  // The recorded outcome of each request it held is another dispatcher's delivery.
  const bySeq = new Map(upstream.deliveries.map((d) => [d.seq, d]));
  const recordedFromVictim: string[] = [];
  for (const l of lines) {
    if (l.kind !== "output") continue;
    const body = (l.line.response as { body: unknown }).body;
    const parsed = (typeof body === "string" ? JSON.parse(body) : body) as { delivery: number };
    const d = bySeq.get(parsed.delivery)!;
    if (heldIds.has(d.requestId) && ports.has(d.remotePort) && d.arrivedAt <= stoppedAt)
      recordedFromVictim.push(l.customId);
  }
  expect(recordedFromVictim, "outcomes recorded from the paused dispatcher's fenced work").toEqual(
    [],
  );
  // It woke up and carried on: still running, not restarted.
  expect(unexpectedExits([...fleet.dispatchers, fleet.controlPlane])).toEqual([]);
  // What it says of itself once stopped: each request it had in flight was fenced (its
  // grant or claim not renewed in time), given up when a renewal answered it lost, or
  // finished and its late report answered "lost".
  victim.child.kill("SIGTERM");
  await victim.exited;
  const stopped = victim
    .stderr()
    .split("\n")
    .filter((l) => l.includes('"msg":"dispatcher stopped"'))
    .map((l) => JSON.parse(l) as { fenced: number; lost: number; dispositions: { lost: number } });
  expect(stopped, "the victim's 'dispatcher stopped' log line").toHaveLength(1);
  const { fenced, lost, dispositions } = stopped[0]!;
  console.log(
    `FAULTS-VICTIM fenced ${fenced} lost ${lost} reports answered lost ${dispositions.lost}`,
  );
  expect(fenced + lost + dispositions.lost).toBeGreaterThanOrEqual(held.length);
});
