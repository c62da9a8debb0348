/**
 * Scenario "writes": what the hot path writes per request, in units that do
 * not depend on the machine's load (docs/architecture.md, "What the hot path
 * writes"). A batch of N requests of one model is uploaded and created
 * through the API, then claimed and completed through DispatchService (Syncs
 * of up to 200 claims, each followed by a report of their completions with a
 * 200-byte body), as a dispatcher would, without an upstream.
 *
 * Per request and phase (ingest: UploadFile + CreateBatch; dispatch: claims
 * and reports): rows inserted, updated and HOT-updated in `requests`,
 * `request_events` and `batches` (pg_stat_user_tables, read after the phase's
 * control plane closed, so its connections flushed their counters), WAL bytes
 * (pg_current_wal_lsn: exact on the bench's own embedded Postgres, a ceiling
 * on a shared server) and, when pg_stat_statements is loaded, statements.
 */
import { type Client, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { CONTROL_PLANE_DEFAULTS } from "../src/config/config.js";
import { startControlPlane } from "../src/control-plane.js";
import { DispatchService } from "../src/gen/fusillade/v1/dispatch_service_pb.js";
import { type Bench, clients, jsonl, log, round, scaled, upload } from "./common.js";

const MODEL = "bench-writes";
const ROOM = 200;
const BODY = new TextEncoder().encode(`{"id":"x","choices":[],"pad":"${"x".repeat(170)}"}`);
const TABLES = ["requests", "request_events", "batches"] as const;

interface Counters {
  tables: Record<string, { ins: number; upd: number; hot: number }>;
  walBytes: number;
  statements: number | null;
}

async function counters(c: pg.Client): Promise<Counters> {
  const t = await c.query<{ relname: string; ins: string; upd: string; hot: string }>(
    `SELECT relname, n_tup_ins AS ins, n_tup_upd AS upd, n_tup_hot_upd AS hot
     FROM pg_stat_user_tables WHERE relname = ANY($1)`,
    [TABLES],
  );
  const tables: Counters["tables"] = {};
  for (const r of t.rows) {
    tables[r.relname] = { ins: Number(r.ins), upd: Number(r.upd), hot: Number(r.hot) };
  }
  const w = await c.query<{ b: string }>(
    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') AS b",
  );
  let statements: number | null = null;
  try {
    const s = await c.query<{ n: string }>(
      `SELECT coalesce(sum(calls), 0) AS n FROM pg_stat_statements
       WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
         AND query NOT LIKE '%pg_stat%'`,
    );
    statements = Number(s.rows[0]!.n);
  } catch {
    statements = null;
  }
  return { tables, walBytes: Number(w.rows[0]!.b), statements };
}

/** Counters settle once the phase's backends have exited and flushed them. */
async function settled(c: pg.Client): Promise<Counters> {
  let last = await counters(c);
  for (let i = 0; i < 50; i++) {
    await new Promise((r) => setTimeout(r, 200));
    const next = await counters(c);
    if (JSON.stringify(next.tables) === JSON.stringify(last.tables)) return next;
    last = next;
  }
  return last;
}

function lsn(bytes: number): string {
  const hi = Math.floor(bytes / 2 ** 32);
  return `${hi.toString(16).toUpperCase()}/${(bytes - hi * 2 ** 32).toString(16).toUpperCase()}`;
}

function perRequest(before: Counters, after: Counters, n: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const t of TABLES) {
    const a = after.tables[t] ?? { ins: 0, upd: 0, hot: 0 };
    const b = before.tables[t] ?? { ins: 0, upd: 0, hot: 0 };
    out[t] = {
      ins: round((a.ins - b.ins) / n, 2),
      upd: round((a.upd - b.upd) / n, 2),
      hot_upd: round((a.hot - b.hot) / n, 2),
    };
  }
  out.wal_bytes = Math.round((after.walBytes - before.walBytes) / n);
  // For pg_waldump --stats=record -s … -e … (records by kind: index inserts, locks).
  out.wal_range = `${lsn(before.walBytes)}..${lsn(after.walBytes)}`;
  if (after.statements !== null && before.statements !== null) {
    out.statements = round((after.statements - before.statements) / n, 3);
  }
  return out;
}

/** Claims everything of the batch and reports it completed; Syncs and reports made. */
async function drain(dispatch: Client<typeof DispatchService>, n: number): Promise<number> {
  let token = 0n;
  let done = 0;
  let calls = 0;
  while (done < n) {
    const res = await dispatch.sync({
      dispatcherId: "bench-writes",
      slots: [{ model: MODEL, token, keep: ROOM, want: ROOM, room: ROOM }],
    });
    token = res.grants[0]?.token ?? 0n;
    calls += 2;
    if (res.claims.length === 0) throw new Error(`writes: no claims after ${done} of ${n}`);
    await dispatch.reportResults({
      dispatcherId: "bench-writes",
      outcomes: res.claims.map((c) => ({
        ref: c.ref,
        result: {
          case: "completion" as const,
          value: { statusCode: 200, body: BODY, headers: { "content-type": "application/json" } },
        },
      })),
    });
    done += res.claims.length;
  }
  return calls;
}

/** A control plane for one phase, closed at its end (its connections then flush their stats). */
async function phase<T>(bench: Bench, fn: (url: string) => Promise<T>): Promise<T> {
  const cp = await startControlPlane(
    { ...CONTROL_PLANE_DEFAULTS, port: 0, databaseUrl: bench.databaseUrl, logLevel: "warn" },
    log,
  );
  try {
    return await fn(cp.url);
  } finally {
    await cp.close();
  }
}

export async function writesScenario(bench: Bench): Promise<Record<string, unknown>> {
  const n = scaled(5_000, 500);
  const c = new pg.Client({ connectionString: bench.databaseUrl });
  await c.connect();
  try {
    await bench.admin.setModelLimit({ model: MODEL, limit: ROOM });
    const t0 = await settled(c);
    const batchId = await phase(bench, async (url) => {
      const { batch } = clients(url);
      const fileId = await upload(batch, jsonl(n, [MODEL], 100), "http://127.0.0.1:9");
      return (await batch.createBatch({ fileId })).batch!.id;
    });
    const t1 = await settled(c);
    const rpcs = await phase(bench, (url) =>
      drain(
        createClient(DispatchService, createConnectTransport({ baseUrl: url, httpVersion: "2" })),
        n,
      ),
    );
    const t2 = await settled(c);
    const left = await c.query<{ n: string }>(
      "SELECT count(*) AS n FROM requests WHERE batch_id = $1 AND state <> 'completed'",
      [batchId],
    );
    if (Number(left.rows[0]!.n) !== 0) {
      bench.failures.push(`writes: ${left.rows[0]!.n} requests of ${n} not completed`);
    }
    return {
      requests: n,
      ingest: perRequest(t0, t1, n),
      dispatch: { ...perRequest(t1, t2, n), rpcs_per_request: round(rpcs / n, 3) },
    };
  } finally {
    await c.end();
  }
}
