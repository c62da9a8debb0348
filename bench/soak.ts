/**
 * Scenario "soak": months of batches on one database, compressed. A steady
 * stream of batches (full: 100 × 2,000 = 200,000 requests; smoke: 40 × 100)
 * goes through a control plane with a short retention (full: 60 s; smoke:
 * 3 s) while this process plays the dispatcher (Sync claims 100, ReportResults
 * completes them, no upstream: the database is what is measured). Every
 * interval it prints the sizes of the hot tables and their indexes, their
 * live and dead rows, and the p50/p99 of the Syncs (claim) and reports of
 * that interval. Every batch's results are read and checked (each custom_id
 * once, every line an output line) as soon as it finishes, before retention
 * can remove it; at the end every batch must have been removed.
 *
 * Target (issue 22): after warm-up (one retention, one autovacuum naptime and
 * one interval: deleted rows are reusable only once vacuumed), sizes
 * and latencies stay within 20 % while the work continues. The figures go to
 * bench/RESULTS.md ("Soak"); the bench fails only on lost, duplicated or
 * undeleted work (a shared machine's latencies are too noisy to gate CI on).
 *
 * It runs in a database of its own on the bench's Postgres, so that other
 * scenarios' tables neither add to its sizes nor are deleted by its retention.
 */
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { setTimeout as delay } from "node:timers/promises";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { CONTROL_PLANE_DEFAULTS } from "../src/config/config.js";
import { startControlPlane } from "../src/control-plane.js";
import { GetBatchResultsResponse_Kind } from "../src/gen/fusillade/v1/batch_service_pb.js";
import { DispatchService } from "../src/gen/fusillade/v1/dispatch_service_pb.js";
import {
  type BatchClient,
  type Bench,
  clients,
  jsonl,
  log,
  percentile,
  round,
  scaled,
  since,
  upload,
  waitFinished,
} from "./common.js";

const MODEL = "soak";
/** BENCH_SOAK_BATCHES: fewer (or more) batches than the full 100, for a run by hand. */
const BATCHES = Number(process.env.BENCH_SOAK_BATCHES ?? scaled(100, 40));
const PER_BATCH = scaled(2_000, 100);
const RETENTION_MS = scaled(60_000, 3_000);
const SAMPLE_MS = scaled(10_000, 1_000);
/** Batches created but not yet finished: the work in flight stays constant. */
const AHEAD = 3;
const ROOM = 100;
const TABLES = ["requests", "request_events", "batches", "files", "request_templates"];

interface Sample {
  t_s: number;
  requests_done: number;
  batches_in_db: number;
  /** Per table: table and index MiB, live and dead rows (pg_stat_user_tables). */
  tables: Record<string, { table_mib: number; index_mib: number; live: number; dead: number }>;
  claim_ms: { p50: number; p99: number };
  report_ms: { p50: number; p99: number };
}

/** A throw-away database next to the bench's; its URL and a drop. */
async function soakDatabase(url: string): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `fusillade_soak_${Date.now()}`;
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const u = new URL(url);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

/** Sizes and row counts of the hot tables. */
async function sizes(sql: pg.Client): Promise<Sample["tables"]> {
  const { rows } = await sql.query<{
    relname: string;
    t: string;
    i: string;
    live: string;
    dead: string;
  }>(
    `SELECT c.relname, pg_table_size(c.oid) AS t, pg_indexes_size(c.oid) AS i,
       s.n_live_tup AS live, s.n_dead_tup AS dead
     FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
     WHERE c.relname = ANY($1)`,
    [TABLES],
  );
  const mib = (b: string) => round(Number(b) / 2 ** 20, 2);
  return Object.fromEntries(
    rows.map((r) => [
      r.relname,
      { table_mib: mib(r.t), index_mib: mib(r.i), live: Number(r.live), dead: Number(r.dead) },
    ]),
  );
}

/** Reads a finished batch's results: every custom_id once, every line an output. */
async function checkResults(batch: BatchClient, batchId: string, failures: string[]) {
  const seen = new Map<string, number>();
  let errors = 0;
  for await (const r of batch.getBatchResults({ batchId })) {
    seen.set(r.customId, (seen.get(r.customId) ?? 0) + 1);
    if (r.kind !== GetBatchResultsResponse_Kind.OUTPUT) errors++;
  }
  const dup = [...seen.values()].filter((n) => n > 1).length;
  if (seen.size !== PER_BATCH || dup > 0 || errors > 0) {
    failures.push(
      `soak: batch ${batchId} had ${seen.size} of ${PER_BATCH} custom_ids, ${dup} duplicated, ${errors} errors`,
    );
  }
}

/** The spread of a few flat-after-warm-up figures: max ÷ min over the samples. */
function flatness(samples: readonly Sample[]): Record<string, number> {
  const ratio = (xs: number[]) => round(Math.max(...xs) / Math.max(Math.min(...xs), 1e-9), 2);
  const of = (f: (s: Sample) => number) => ratio(samples.map(f));
  const req = (s: Sample) => s.tables.requests!;
  const ev = (s: Sample) => s.tables.request_events!;
  return {
    requests_total_mib: of((s) => req(s).table_mib + req(s).index_mib),
    request_events_total_mib: of((s) => ev(s).table_mib + ev(s).index_mib),
    claim_p50_ms: of((s) => s.claim_ms.p50),
    report_p50_ms: of((s) => s.report_ms.p50),
  };
}

/**
 * What retention deleted and the time its passes took (their pauses
 * included), from the control plane's metrics: the rate it sustains.
 */
async function deletionRate(text: Promise<string>): Promise<Record<string, number>> {
  const t = await text;
  const value = (re: RegExp) => Number(re.exec(t)?.[1] ?? 0);
  const rows = Object.fromEntries(
    ["batches", "requests", "events", "files", "templates"].map((k) => [
      k,
      value(new RegExp(`fusillade_retention_deleted_rows_total\\{kind="${k}"\\} (\\S+)`)),
    ]),
  );
  const seconds = value(/fusillade_retention_pass_seconds_sum (\S+)/);
  const total = Object.values(rows).reduce((a, b) => a + b, 0);
  return { ...rows, pass_seconds: round(seconds, 1), rows_per_s: Math.round(total / seconds) };
}

/** Runs the soak; returns its samples and checks. */
export async function soakScenario(bench: Bench): Promise<Record<string, unknown>> {
  const db = await soakDatabase(bench.databaseUrl);
  const cp = await startControlPlane(
    {
      ...CONTROL_PLANE_DEFAULTS,
      port: 0,
      databaseUrl: db.url,
      logLevel: "warn",
      // Its own key: nothing is written to a data directory.
      secretKey: { key: randomBytes(32).toString("base64") },
      retentionMs: RETENTION_MS,
      eventRetentionMs: RETENTION_MS / 2,
    },
    log,
  );
  const sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  try {
    // Without autovacuum nothing dead is reused and the tables grow: say so.
    const { rows: server } = await sql.query<{ name: string; setting: string }>(
      `SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', 'autovacuum_naptime')`,
    );
    const postgres = Object.fromEntries(server.map((r) => [r.name, r.setting]));
    if (postgres.autovacuum !== "on") {
      process.stderr.write(
        "\n  soak: autovacuum is off on this server: dead rows are never reused",
      );
    }
    const { batch, admin } = clients(cp.url);
    const dispatch = createClient(
      DispatchService,
      createConnectTransport({ baseUrl: cp.url, httpVersion: "2" }),
    );
    await admin.setModelLimit({ model: MODEL, limit: 100_000 });
    const content = jsonl(PER_BATCH, [MODEL], 200);
    const body = new TextEncoder().encode(`{"choices":[{"text":"${"y".repeat(300)}"}]}`);
    const t0 = performance.now();
    let done = 0;
    let created = 0;
    let finished = 0;
    const claimMs: number[] = [];
    const reportMs: number[] = [];
    const checks: Promise<void>[] = [];
    const samples: Sample[] = [];

    // Woken when a batch has been checked: the producer waits for room.
    let room: (() => void) | undefined;
    // The producer: keeps AHEAD batches unfinished, each checked once finished.
    const produce = async () => {
      while (created < BATCHES) {
        while (created - finished >= AHEAD) {
          await new Promise<void>((resolve) => {
            room = resolve;
          });
        }
        const fileId = await upload(batch, content, "http://127.0.0.1:9");
        const { batch: b } = await batch.createBatch({ fileId });
        created++;
        checks.push(
          waitFinished(batch, b!.id).then(async () => {
            await checkResults(batch, b!.id, bench.failures);
            finished++;
            room?.();
          }),
        );
      }
    };
    // The dispatcher: claim ROOM, complete them, again, timing both calls.
    const consume = async () => {
      let token = 0n;
      while (done < BATCHES * PER_BATCH) {
        const c0 = performance.now();
        const res = await dispatch.sync({
          dispatcherId: "soak",
          slots: [{ model: MODEL, token, keep: 0, want: ROOM, room: ROOM }],
        });
        token = res.grants[0]?.token ?? 0n;
        if (res.claims.length === 0) {
          await delay(10);
          continue;
        }
        claimMs.push(since(c0));
        const r0 = performance.now();
        await dispatch.reportResults({
          dispatcherId: "soak",
          outcomes: res.claims.map((c) => ({
            ref: c.ref,
            result: { case: "completion" as const, value: { statusCode: 200, body, headers: {} } },
          })),
        });
        reportMs.push(since(r0));
        done += res.claims.length;
      }
    };
    const sample = async () => {
      const s: Sample = {
        t_s: Math.round(since(t0) / 1000),
        requests_done: done,
        batches_in_db: Number((await sql.query("SELECT count(*) AS n FROM batches")).rows[0].n),
        tables: await sizes(sql),
        claim_ms: { p50: round(percentile(claimMs, 50)), p99: round(percentile(claimMs, 99)) },
        report_ms: { p50: round(percentile(reportMs, 50)), p99: round(percentile(reportMs, 99)) },
      };
      claimMs.length = 0;
      reportMs.length = 0;
      samples.push(s);
      const r = s.tables.requests!;
      const e = s.tables.request_events!;
      process.stderr.write(
        `\n  soak ${s.t_s}s: ${s.requests_done} done, ${s.batches_in_db} batches; requests ${r.table_mib}+${r.index_mib} MiB (${r.live} live, ${r.dead} dead); events ${e.table_mib}+${e.index_mib} MiB (${e.live} live, ${e.dead} dead); claim p50/p99 ${s.claim_ms.p50}/${s.claim_ms.p99} ms, report ${s.report_ms.p50}/${s.report_ms.p99} ms`,
      );
    };
    let running = true;
    const sampler = (async () => {
      while (running) {
        await delay(SAMPLE_MS);
        if (running) await sample();
      }
    })();
    await Promise.all([produce(), consume()]);
    await Promise.all(checks);
    const workS = since(t0) / 1000;
    running = false;
    await sampler;
    // Retention catches up: every batch goes within a retention and a pass or two.
    const deadline = performance.now() + RETENTION_MS + 3 * 60_000;
    let left = 1;
    while (left > 0 && performance.now() < deadline) {
      left = Number((await sql.query("SELECT count(*) AS n FROM batches")).rows[0].n);
      if (left > 0) await delay(500);
    }
    const drainS = since(t0) / 1000 - workS;
    const deletion = await deletionRate(cp.metrics.text());
    if (left > 0) bench.failures.push(`soak: ${left} batches were not deleted by retention`);
    // Warm-up: the first retention (tables grow until deletion starts), then the
    // first autovacuum round after it (naptime: deleted rows are reusable only once
    // vacuumed), then one interval.
    const naptimeMs = Number(postgres.autovacuum_naptime ?? 60) * 1000;
    const warmUpMs = RETENTION_MS + naptimeMs + SAMPLE_MS;
    const warm = samples.filter((s) => s.t_s * 1000 >= warmUpMs && s.claim_ms.p50 > 0);
    return {
      batches: BATCHES,
      requests: BATCHES * PER_BATCH,
      postgres,
      retention_s: RETENTION_MS / 1000,
      work_s: round(workS, 1),
      requests_per_s: Math.round((BATCHES * PER_BATCH) / workS),
      drain_after_work_s: round(drainS, 1),
      batches_left: left,
      deletion,
      samples,
      after_warm_up: {
        from_s: warmUpMs / 1000,
        samples: warm.length,
        max_over_min: warm.length > 1 ? flatness(warm) : {},
      },
    };
  } finally {
    await sql.end();
    await cp.close();
    await db.drop();
  }
}
