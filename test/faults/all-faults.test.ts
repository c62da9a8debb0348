/**
 * Every fault of the suite on one batch, one after the other (the CI-sized
 * run inside `npm test`; test/faults/scenarios/ has each one alone, at full
 * size under `npm run test:faults`): a dispatcher SIGKILLed, a dispatcher
 * SIGSTOPped past its leases, the control plane SIGKILLed, Postgres stopped
 * and started, another dispatcher SIGKILLed, the first one again; while the
 * upstream resets connections mid-body, answers 500 and NUL-byte bodies. (No
 * hangs here: a request a paused dispatcher left hanging stays in flight at the
 * upstream, see scenarios/dispatcher-pause.test.ts; hangs have their own
 * scenario, scenarios/upstream-faults.test.ts.)
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import type { Step } from "../helpers/upstream.js";
import {
  batchItems,
  Fleet,
  FULL,
  LEASE_TTL_MS,
  OwnPostgres,
  pool,
  signalWhenBusy,
  unexpectedExits,
} from "./fleet.js";
import { verifyBatch } from "./verify.js";

const N = FULL ? 3000 : 600;
let postgres: OwnPostgres;
let fleet: Fleet;
let sql: pg.Pool;

beforeAll(async () => {
  postgres = await OwnPostgres.start();
  sql = pool(postgres.url);
  await Fleet.start(
    {
      controlPlane: { kind: "control-plane", databaseUrl: postgres.url },
      dispatcherArgs: ["--first-byte-timeout", "3s", "--total-timeout", "4s"],
    },
    (f) => {
      fleet = f; // at once: afterAll closes it even if this hook times out
    },
  );
});
afterAll(async () => {
  for (const d of fleet?.dispatchers ?? []) d?.child.kill("SIGCONT");
  await fleet?.close();
  await sql?.end();
  await postgres?.close();
});

test("one batch through every fault in turn: nothing lost, nothing recorded twice, limits held", async () => {
  const { upstream } = fleet;
  upstream.respond = (d): Step => {
    const i = Number(d.customId.split("-")[1]);
    if (d.attempt === 1 && i % 20 === 1) return { resetAfterBytes: 10 };
    if (d.attempt === 1 && i % 20 === 5) return { status: 500, body: "oops" };
    if (i % 50 === 7) return { body: '{"text":"a\u0000b"}' };
    // Slow answers: the batch outlasts the faults, whose restarts take seconds (up to ~10 s
    // for a dispatcher process on a busy 2-CPU machine: it compiles its TypeScript first).
    return {
      delayMs: FULL ? 100 + Math.floor(Math.random() * 200) : 600 + Math.floor(Math.random() * 800),
    };
  };
  const items = batchItems(N);
  const startedAt = Date.now();
  const batchId = await fleet.createBatch(items, { maxRetries: 5, initialBackoffMs: 100 });
  const reached = (share: number) =>
    upstream.until(
      () => upstream.deliveries.length >= N * share,
      60_000,
      `${share * 100} % delivered`,
    );
  const log: string[] = [];
  const note = (what: string) =>
    log.push(`${((Date.now() - startedAt) / 1000).toFixed(1)}s ${what}`);

  const killDispatcher = async (i: number) => {
    const p = fleet.dispatchers[i]!;
    const { held, at } = await signalWhenBusy(upstream, p, "SIGKILL");
    note(`(SIGKILL d${i} sent at ${((at - startedAt) / 1000).toFixed(3)}s)`);
    await p.exited;
    await fleet.startDispatcher(i);
    note(`SIGKILL d${i} (${held.length} in flight)`);
  };

  await reached(0.1);
  await killDispatcher(0);

  await reached(0.25);
  const paused = fleet.dispatchers[1]!;
  const { held, ports, at } = await signalWhenBusy(upstream, paused, "SIGSTOP");
  await upstream.until(
    () =>
      held.every((h) =>
        upstream.deliveries.some((d) => d.requestId === h.requestId && !ports.has(d.remotePort)),
      ),
    30_000,
    "the paused dispatcher's requests to be sent again by others",
  );
  const left = at + LEASE_TTL_MS + 500 - Date.now();
  if (left > 0) await new Promise((r) => setTimeout(r, left)); // the pause's length is the fault
  paused.child.kill("SIGCONT");
  note(`SIGSTOP d1 ${Date.now() - at} ms (${held.length} in flight)`);

  await reached(0.4);
  note("(SIGKILL control plane sent)");
  await Fleet.kill(fleet.controlPlane);
  await fleet.startControlPlane();
  note("SIGKILL control plane");

  await reached(0.55);
  note("(Postgres stop)");
  await postgres.stop();
  const during = await fleet.api.batch.getBatchStatus({ batchId }).then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
  expect(during?.code, String(during)).toBe(Code.Unavailable);
  await upstream.until(() => upstream.inFlight === 0, 10_000, "the fleet to run dry");
  await postgres.start();
  note("Postgres restart");

  await reached(0.7);
  await killDispatcher(2);
  await reached(0.85);
  await killDispatcher(0);

  await verifyBatch({
    scenario: "all faults on one batch",
    api: fleet.api,
    sql,
    upstream,
    batchId,
    items,
    startedAt,
    onStuck: () => fleet.dumpDispatchers(),
    timeoutMs: 60_000,
    extra: { faults: log, selfFenced: fleet.selfFenced() },
    portOwners: fleet.portOwners,
  });
  expect(unexpectedExits([...fleet.dispatchers, fleet.controlPlane])).toEqual([]);
}, 200_000); // the default config's 60 s is too short for a batch through six faults
