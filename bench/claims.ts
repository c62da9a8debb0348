/**
 * Scenario "claims": the cost of one Sync that claims 10 requests
 * (docs/fair-share.md), fair share on and off, on three models:
 *
 * - deep: one batch of 1,000,000 pending requests (the backlog);
 * - shallow: one batch of 10,000: with the deep one, shows whether the cost
 *   grows with the backlog (it should not);
 * - many: 50 batches of 200 in two tenants: the cost of choosing among
 *   active batches, which fair share reads on every claim.
 *
 * Each figure is the p50/p99 over 200 Syncs (each followed, untimed, by a
 * report completing what it claimed), beside a floor measured in the same
 * run: the bare claim statement (10 rows of one batch, FOR UPDATE SKIP
 * LOCKED, rolled back) on one prepared connection. "Off" is a second control
 * plane on the same database with FUSILLADE_FAIR_SHARE=off.
 *
 * The backlog is written with SQL (generate_series); through the API it would
 * take longer than everything measured here.
 */
import { performance } from "node:perf_hooks";
import { type Client, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { CONTROL_PLANE_DEFAULTS } from "../src/config/config.js";
import { startControlPlane } from "../src/control-plane.js";
import { DispatchService } from "../src/gen/fusillade/v1/dispatch_service_pb.js";
import { type Bench, log, round, scaled, since, spread } from "./common.js";

const CALLS = 200;
const ROOM = 10;

/** Writes `batches` batches of `each` pending requests of `model`, tenants alternating a/b. */
async function backlog(
  client: pg.Client,
  model: string,
  batches: number,
  each: number,
): Promise<string[]> {
  const ids: string[] = [];
  await client.query("BEGIN");
  for (let b = 0; b < batches; b++) {
    const tenant = b % 2 === 0 ? "bench-a" : "bench-b";
    const file = await client.query<{ id: string }>(
      `INSERT INTO files (filename, template_count, size_bytes, models, tenant)
       VALUES ('bench-claims.jsonl', $1, $1 * 100, $2, $3) RETURNING id`,
      [each, [model], tenant],
    );
    const batch = await client.query<{ id: string }>(
      `INSERT INTO batches (file_id, completion_window, max_retries, initial_backoff_ms,
         max_backoff_ms, total_count, pending_count, expires_at, tenant)
       VALUES ($1, '24h', 5, 1000, 60000, $2, $2, now() + interval '24 hours', $3) RETURNING id`,
      [file.rows[0]!.id, each, tenant],
    );
    const batchId = batch.rows[0]!.id;
    // Inserts fire no trigger (it is AFTER UPDATE): the counters above are the truth.
    await client.query(
      `INSERT INTO requests (batch_id, line, custom_id, endpoint, method, path, body, model, tenant)
       SELECT $1, g, 'req-' || g, 'http://127.0.0.1:9', 'POST', '/v1/chat/completions',
         '{"model":"' || $2 || '","messages":[{"role":"user","content":"hi"}]}', $2, $4
       FROM generate_series(1, $3) g`,
      [batchId, model, each, tenant],
    );
    ids.push(batchId);
  }
  await client.query(
    `INSERT INTO model_limits (model, max_in_flight) VALUES ($1, 100000)
     ON CONFLICT (model) DO UPDATE SET max_in_flight = 100000`,
    [model],
  );
  await client.query("COMMIT");
  return ids;
}

/** p50/p99 of Syncs claiming ROOM of `model`; each claim is then completed (untimed). */
async function syncs(
  dispatch: Client<typeof DispatchService>,
  holder: string,
  model: string,
  failures: string[],
): Promise<number[]> {
  let token = 0n;
  const ms: number[] = [];
  for (let i = 0; i < CALLS + 5; i++) {
    const t0 = performance.now();
    const res = await dispatch.sync({
      dispatcherId: holder,
      slots: [{ model, token, keep: 0, want: ROOM, room: ROOM }],
    });
    if (i >= 5) ms.push(since(t0));
    token = res.grants[0]?.token ?? 0n;
    if (res.claims.length !== ROOM) {
      failures.push(`claims: a Sync of ${model} claimed ${res.claims.length}, not ${ROOM}`);
    }
    await dispatch.reportResults({
      dispatcherId: holder,
      outcomes: res.claims.map((c) => ({
        ref: c.ref,
        result: {
          case: "completion" as const,
          value: { statusCode: 200, body: new TextEncoder().encode("{}"), headers: {} },
        },
      })),
    });
  }
  return ms;
}

/** The bare claim statement on one connection, rolled back: the floor. */
async function floor(client: pg.Client, model: string, batchId: string): Promise<number[]> {
  const ms: number[] = [];
  for (let i = 0; i < CALLS + 5; i++) {
    const t0 = performance.now();
    await client.query("BEGIN");
    await client.query({
      name: "claim-floor",
      text: `UPDATE requests r SET state = 'leased', attempt = r.attempt + 1,
               lease_token = nextval('lease_token_seq'), lease_holder = 'floor',
               lease_expires_at = now() + interval '30 seconds'
             FROM (SELECT id FROM requests WHERE model = $1 AND batch_id = $2 AND state = 'pending'
                   ORDER BY created_at, line LIMIT $3 FOR UPDATE SKIP LOCKED) p
             WHERE r.id = p.id RETURNING r.id, r.body`,
      values: [model, batchId, ROOM],
    });
    await client.query("ROLLBACK");
    if (i >= 5) ms.push(since(t0));
  }
  return ms;
}

/** Claim cost with a 1,000,000-request backlog (smoke: 10,000), fair share on and off. */
export async function claimsScenario(bench: Bench): Promise<Record<string, unknown>> {
  const client = new pg.Client({ connectionString: bench.databaseUrl });
  await client.connect();
  const fifo = await startControlPlane(
    {
      ...CONTROL_PLANE_DEFAULTS,
      port: 0,
      databaseUrl: bench.databaseUrl,
      logLevel: "warn",
      sharePolicy: "fifo",
    },
    log,
  );
  try {
    const t0 = performance.now();
    const models = {
      deep: { batches: 1, each: scaled(1_000_000, 10_000) },
      // Each model gives 2 × 205 Syncs × 10 claims: at least 4,100 requests.
      shallow: { batches: 1, each: scaled(10_000, 5_000) },
      many: { batches: scaled(50, 10), each: scaled(200, 500) },
    };
    const first: Record<string, string> = {};
    for (const [name, m] of Object.entries(models)) {
      first[name] = (await backlog(client, `bench-claims-${name}`, m.batches, m.each))[0]!;
    }
    await client.query("ANALYZE requests");
    await client.query("ANALYZE batches");
    const buildS = since(t0) / 1000;

    const on = createClient(
      DispatchService,
      createConnectTransport({ baseUrl: bench.cpUrl, httpVersion: "2" }),
    );
    const off = createClient(
      DispatchService,
      createConnectTransport({ baseUrl: fifo.url, httpVersion: "2" }),
    );
    const out: Record<string, unknown> = {
      backlog: models.deep.each,
      build_s: round(buildS, 1),
    };
    for (const name of Object.keys(models)) {
      const model = `bench-claims-${name}`;
      const sql = spread(await floor(client, model, first[name]!));
      const fair = spread(await syncs(on, `bench-on-${name}`, model, bench.failures));
      const plain = spread(await syncs(off, `bench-off-${name}`, model, bench.failures));
      out[name] = {
        sql,
        fair_on: { ...fair, ratio_p50_to_sql: round(fair.p50_ms / sql.p50_ms, 1) },
        fair_off: { ...plain, ratio_p50_to_sql: round(plain.p50_ms / sql.p50_ms, 1) },
      };
    }
    return out;
  } finally {
    await fifo.close();
    await client.end();
  }
}
