/**
 * DispatchService over serve's in-process port (src/api/port-server.ts,
 * src/dispatcher/port-transport.ts) behaves as over HTTP/2: every case runs
 * over both, against one real control plane on a real database, and expects
 * the same answer — the same ControlPlaneError (code, retriable, rejected,
 * message) for a rejected call, the same dispositions, the same deadline and
 * cancellation behaviour, the same end when the control plane closes.
 */
import type { MessagePort } from "node:worker_threads";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { PortAnswer } from "../../src/dispatch-port.js";
import {
  ControlPlaneError,
  connectLeaseClient,
  type LeaseClient,
  type WorkInterest,
} from "../../src/dispatcher/lease-client.js";
import { portLeaseClient } from "../../src/dispatcher/port-transport.js";
import type { AttemptOutcome } from "../../src/domain/outcome.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { createTestBatch, items, stateCounts } from "../helpers/dispatcher-process.js";

let t: TestControlPlane;
let sql: pg.Pool;
let token: string;

beforeAll(async () => {
  t = await startTestControlPlane();
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  token = t.cp.internalDispatcherToken();
});
afterAll(async () => {
  await sql?.end();
  await t?.close();
});

type Transport = "HTTP/2" | "port";
/**
 * A lease client of `cp` over `transport` sending `credential` (null: none); the port is
 * passed to `onPort`.
 */
function client(
  transport: Transport,
  id: string,
  credential: string | null = token,
  cp: TestControlPlane = t,
  onPort: (port: MessagePort) => void = () => undefined,
): LeaseClient {
  const bearer = credential ?? undefined;
  if (transport === "HTTP/2") return connectLeaseClient(cp.url, id, bearer);
  const port = cp.cp.internalDispatcherPort();
  onPort(port);
  return portLeaseClient(port, id, bearer);
}

/** What a failed call says, as the dispatcher reads it. */
async function failure(p: Promise<unknown>) {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ControlPlaneError);
  const c = e as ControlPlaneError;
  return { message: c.message, code: c.code, retriable: c.retriable, rejected: c.rejected };
}

const NO_WORK: WorkInterest = {
  models: ["no-such-model"],
  hungry: ["no-such-model"],
  grow: [],
  known: [],
  newModels: false,
  more: [],
};

/** A grant of `model` for `c` (the first Sync asks for slots only), then its claims. */
async function claim(c: LeaseClient, model: string, n: number) {
  const first = await c.sync([{ model, token: 0n, keep: 0, want: n, room: 0 }], [], 5000);
  const grant = first.grants.find((g) => g.model === model)!;
  const demand = { model, token: grant.token, keep: grant.slots, want: n };
  return {
    grant,
    demand,
    claim: (room: number, timeoutMs = 5000) => c.sync([{ ...demand, room }], [], timeoutMs),
  };
}

describe.each<Transport>(["HTTP/2", "port"])("DispatchService over %s", (transport) => {
  const tag = transport === "port" ? "port" : "h2";

  test("a call the control plane rejects is the same ControlPlaneError", async () => {
    const noId = client(transport, "");
    expect(await failure(noId.sync([], [], 5000))).toEqual({
      message: "Sync: InvalidArgument: dispatcher_id: is required",
      code: 3,
      retriable: false,
      rejected: true,
    });
    noId.close();
    const badToken = client(transport, `d-${tag}`, "not-a-token");
    expect(await failure(badToken.sync([], [], 5000))).toEqual({
      message: "Sync: Unauthenticated: the token is not valid (unknown or revoked)",
      code: 16,
      retriable: true,
      rejected: false,
    });
    badToken.close();
    const c = client(transport, `d-${tag}`);
    const bogus = {
      kind: "failure",
      statusCode: 500,
      code: "bogus",
      message: "x",
      retriable: true,
      bodyExcerpt: new Uint8Array(),
      headers: {},
    } as unknown as AttemptOutcome;
    const ref = { requestId: "00000000-0000-4000-8000-000000000000", token: 1n };
    expect(await failure(c.report([{ ref, kind: "outcome", outcome: bogus }], [], 5000))).toEqual({
      message: 'ReportResults: InvalidArgument: outcomes[0].failure.code: unknown code "bogus"',
      code: 3,
      retriable: false,
      rejected: true,
    });
    c.close();
  });

  test("a report of a claim no longer current is answered lost; a current one recorded", async () => {
    const model = `lost-${tag}`;
    await createTestBatch(t.batch, "http://127.0.0.1:9", items(model, 2));
    const c = client(transport, `d-lost-${tag}`);
    const { claim: take } = await claim(c, model, 2);
    const { claims } = await take(2);
    expect(claims).toHaveLength(2);
    const done = (ref: (typeof claims)[number]["ref"]) => ({
      ref,
      kind: "outcome" as const,
      outcome: {
        kind: "completion" as const,
        statusCode: 200,
        headers: {},
        body: new Uint8Array([123, 125]),
      },
    });
    const [a, b] = claims.map((x) => x.ref) as [
      (typeof claims)[0]["ref"],
      (typeof claims)[0]["ref"],
    ];
    const stale = { requestId: b.requestId, token: b.token + 1000n };
    const first = await c.report([done(a), done(stale)], [], 5000);
    expect(Object.fromEntries(first.dispositions)).toEqual({
      [`${a.requestId}/${a.token}`]: "recorded",
      [`${stale.requestId}/${stale.token}`]: "lost",
    });
    const again = await c.report([done(a), done(b)], [], 5000);
    expect(Object.fromEntries(again.dispositions)).toEqual({
      [`${a.requestId}/${a.token}`]: "lost",
      [`${b.requestId}/${b.token}`]: "recorded",
    });
    c.close();
  });

  test("WaitForWork's long poll ends when its signal aborts", async () => {
    const answers: PortAnswer[] = [];
    const c = client(transport, `d-wait-${tag}`, token, t, (port) =>
      port.on("message", (m: PortAnswer) => answers.push(m)),
    );
    const abort = new AbortController();
    const started = performance.now();
    const waiting = c.waitForWork(NO_WORK, 20_000, abort.signal);
    setTimeout(() => abort.abort(), 200);
    expect(await failure(waiting)).toMatchObject({
      message: "WaitForWork: Canceled: This operation was aborted",
      code: 1,
      retriable: true,
      rejected: false,
    });
    expect(performance.now() - started).toBeLessThan(5000);
    if (transport === "port") {
      // The cancellation crossed: the control plane's long poll ended too and answered
      // (into the void), long before its 20 s.
      await expect.poll(() => answers.length, { timeout: 5000 }).toBe(1);
      expect(performance.now() - started).toBeLessThan(5000);
    }
    c.close();
  });

  test("a Sync past its deadline fails as DeadlineExceeded, and the claims it made are given back", async () => {
    const model = `deadline-${tag}`;
    const batchId = await createTestBatch(t.batch, "http://127.0.0.1:9", items(model, 3));
    const c = client(transport, `d-deadline-${tag}`);
    const { claim: take } = await claim(c, model, 3);
    // Hold the batch row: the claim's trigger waits for it, past the call's deadline.
    const blocker = await sql.connect();
    try {
      await blocker.query("BEGIN");
      await blocker.query("SELECT 1 FROM batches WHERE id = $1 FOR UPDATE", [batchId]);
      const started = performance.now();
      expect(await failure(take(3, 300))).toMatchObject({
        message: "Sync: DeadlineExceeded: the operation timed out",
        retriable: true,
        rejected: false,
      });
      expect(performance.now() - started).toBeLessThan(3000);
      await blocker.query("COMMIT");
    } finally {
      blocker.release();
    }
    // The control plane claimed once the row was free, saw the call was over, and gave the
    // claims back unsent (their attempts too), as it does when an HTTP/2 caller went away.
    const leased = async () =>
      (
        await sql.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM request_events WHERE batch_id = $1 AND state = 'leased'",
          [batchId],
        )
      ).rows[0]!.n;
    await expect.poll(leased, { timeout: 10_000 }).toBe(3);
    await expect.poll(() => stateCounts(sql, batchId), { timeout: 10_000 }).toEqual({ pending: 3 });
    const attempts = await sql.query<{ attempt: number }>(
      "SELECT attempt FROM requests WHERE batch_id = $1",
      [batchId],
    );
    expect(attempts.rows.map((r) => r.attempt)).toEqual([0, 0, 0]);
    c.close();
  });

  test("when the control plane closes, a long poll ends at once and later calls fail as unreachable", async () => {
    const own = await startTestControlPlane();
    try {
      const c = client(transport, `d-close-${tag}`, own.cp.internalDispatcherToken(), own);
      const started = performance.now();
      const waiting = c.waitForWork(NO_WORK, 20_000, new AbortController().signal);
      // The long poll is under way (a Sync after it on the same client answers first).
      await c.sync([], [], 5000);
      await own.stop();
      expect(await waiting).toEqual([]);
      expect(performance.now() - started).toBeLessThan(5000);
      expect(await failure(c.sync([], [], 5000))).toMatchObject({
        code: undefined,
        retriable: true,
        rejected: false,
      });
      c.close();
    } finally {
      await own.close();
    }
  });
});

test("over the port, a call needs the internal token, even in local mode (no loopback Host)", async () => {
  const c = client("port", "d-no-token", null);
  expect(await failure(c.sync([], [], 5000))).toMatchObject({
    code: 7,
    retriable: true,
    message: expect.stringContaining("PermissionDenied"),
  });
  c.close();
  // Over HTTP/2 from loopback, local mode lets a call without a token in.
  const wire = client("HTTP/2", "d-no-token", null);
  await expect(wire.sync([], [], 5000)).resolves.toBeDefined();
  wire.close();
});
