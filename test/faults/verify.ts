/**
 * What every fault scenario checks once its batch has ended, and the one
 * line of figures it prints:
 * - lost: custom ids of the batch without a line in GetBatchResults
 *   (output and error lines together);
 * - recordedTwice: custom ids with more than one results line, plus requests
 *   with more than one terminal transition in `request_events` (the trigger
 *   logs every state change, so a second recording would show there);
 * - peak in flight per model, measured at the upstream, against its limit;
 * - leasedLeft: requests not terminal (leased or otherwise) after the end.
 * Re-deliveries (a request id sent again after a kill or an expired claim)
 * are allowed (execution is at-least-once) and printed, not failed.
 */
import type pg from "pg";
import { expect } from "vitest";
import { GetBatchResultsResponse_Kind } from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { type TestItem, waitForBatch } from "../helpers/dispatcher-process.js";
import type { Upstream } from "../helpers/upstream.js";
import { type apiClients, MODELS } from "./fleet.js";

/** One results line, as the test reads it. */
export interface ResultLine {
  kind: "output" | "error";
  customId: string;
  line: Record<string, unknown>;
}

/** Figures of one scenario; printed as one JSON line. */
export interface Figures {
  scenario: string;
  requests: number;
  completed: number;
  failed: number;
  lost: number;
  recordedTwice: number;
  peak: Record<string, string>;
  leasedLeft: number;
  deliveries: number;
  redelivered: number;
  seconds: number;
  [more: string]: unknown;
}

/** Every results line of a batch. */
export async function resultLines(
  api: ReturnType<typeof apiClients>,
  batchId: string,
): Promise<ResultLine[]> {
  const out: ResultLine[] = [];
  for await (const m of api.batch.getBatchResults({ batchId })) {
    out.push({
      kind: m.kind === GetBatchResultsResponse_Kind.OUTPUT ? "output" : "error",
      customId: m.customId,
      line: JSON.parse(m.line) as Record<string, unknown>,
    });
  }
  return out;
}

/**
 * Waits for the batch to end, checks the invariants, prints the figures line
 * and returns it with the results lines (for scenario-specific checks).
 */
export async function verifyBatch(opts: {
  scenario: string;
  api: ReturnType<typeof apiClients>;
  sql: pg.Pool;
  upstream: Upstream;
  batchId: string;
  items: TestItem[];
  startedAt: number;
  timeoutMs?: number;
  extra?: Record<string, unknown>;
  /** Called when the batch does not end in time, before the failure (e.g. to dump dispatcher state). */
  onStuck?: () => Promise<void>;
  portOwners?: Map<number, string>;
}): Promise<{ figures: Figures; lines: ResultLine[] }> {
  const { api, sql, upstream, batchId, items } = opts;
  try {
    await waitForBatch(api.batch, batchId, opts.timeoutMs ?? 120_000);
  } catch (err) {
    // What is stuck, for the report.
    const stuck = await sql.query(
      `SELECT custom_id, state, attempt, lease_holder, lease_token, lease_expires_at, not_before,
              now() AS now
       FROM requests WHERE batch_id = $1
         AND state NOT IN ('completed', 'failed', 'canceled', 'expired')
       ORDER BY line LIMIT 20`,
      [batchId],
    );
    console.log(`FAULTS-STUCK ${opts.scenario} ${JSON.stringify(stuck.rows)}`);
    await opts.onStuck?.();
    throw err;
  }
  const seconds = Math.round((Date.now() - opts.startedAt) / 100) / 10;

  const lines = await resultLines(api, batchId);
  const perId = new Map<string, number>();
  for (const l of lines) perId.set(l.customId, (perId.get(l.customId) ?? 0) + 1);
  const lostIds = items.filter((it) => !perId.has(it.customId)).map((it) => it.customId);
  const twiceIds = [...perId].filter(([, n]) => n > 1).map(([id]) => id);
  const strangers = [...perId.keys()].filter((id) => !items.some((it) => it.customId === id));

  const terminalTwice = await sql.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM (
       SELECT request_id FROM request_events
       WHERE batch_id = $1 AND state IN ('completed', 'failed', 'canceled', 'expired')
       GROUP BY request_id HAVING count(*) > 1) t`,
    [batchId],
  );
  const notTerminal = await sql.query<{ state: string; n: number }>(
    `SELECT state, count(*)::int AS n FROM requests
     WHERE batch_id = $1 AND state NOT IN ('completed', 'failed', 'canceled', 'expired')
     GROUP BY state`,
    [batchId],
  );
  const leasedLeft = notTerminal.rows.reduce((n, r) => n + r.n, 0);

  const perRequest = new Map<string, number>();
  for (const d of upstream.deliveries)
    perRequest.set(d.requestId, (perRequest.get(d.requestId) ?? 0) + 1);
  const peak: Record<string, string> = {};
  const over: string[] = [];
  for (const { model, limit } of MODELS) {
    const p = upstream.gauge(model).peak;
    peak[model] = `${p}/${limit}`;
    if (p > limit) over.push(model);
  }
  const figures: Figures = {
    scenario: opts.scenario,
    requests: items.length,
    completed: lines.filter((l) => l.kind === "output").length,
    failed: lines.filter((l) => l.kind === "error").length,
    lost: lostIds.length,
    recordedTwice: twiceIds.length + terminalTwice.rows[0]!.n,
    peak,
    leasedLeft,
    deliveries: upstream.deliveries.length,
    redelivered: [...perRequest.values()].filter((n) => n > 1).length,
    seconds,
    ...opts.extra,
  };
  console.log(`FAULTS ${JSON.stringify(figures)}`);
  for (const model of over)
    console.log(
      `FAULTS-OVER ${model} ${overshoot(upstream, model, opts.startedAt, opts.portOwners)}`,
    );

  expect(lostIds, "requests without a results line").toEqual([]);
  expect(twiceIds, "requests with more than one results line").toEqual([]);
  expect(strangers, "results lines of custom ids not in the batch").toEqual([]);
  expect(terminalTwice.rows[0]!.n, "requests recorded terminal twice").toBe(0);
  expect(notTerminal.rows, "requests not terminal after the batch ended").toEqual([]);
  expect(over, "models whose limit was exceeded at the upstream").toEqual([]);
  return { figures, lines };
}

/** Where a model's in-flight count first went above its limit: the requests in flight then. */
function overshoot(
  upstream: Upstream,
  model: string,
  startedAt: number,
  owners?: Map<number, string>,
): string {
  const limit = MODELS.find((m) => m.model === model)!.limit;
  const first = upstream.timeline.find(([, m, n]) => m === model && n > limit);
  if (!first) return "none";
  const t = first[0];
  const open = upstream.deliveries.filter(
    (d) => d.model === model && d.arrivedAt <= t && (d.endedAt === undefined || d.endedAt > t),
  );
  const around = upstream.deliveries
    .filter((d) => d.model === model && d.endedAt !== undefined && Math.abs(d.endedAt - t) <= 2)
    .map((d) => ({
      from: owners?.get(d.remotePort),
      id: d.customId,
      end: d.end,
      dt: d.endedAt! - t,
    }));
  return JSON.stringify({
    atS: (t - startedAt) / 1000,
    endedWithin2ms: around,
    inFlight: open.map((d) => ({
      port: d.remotePort,
      from: owners?.get(d.remotePort),
      id: d.customId,
      attempt: d.attempt,
      arrivedS: (d.arrivedAt - startedAt) / 1000,
      end: d.end,
      endedS: d.endedAt === undefined ? null : (d.endedAt - startedAt) / 1000,
    })),
  });
}
