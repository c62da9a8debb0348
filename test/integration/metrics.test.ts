/**
 * Observability of a real run: a control plane and a dispatcher on real
 * sockets against a loopback upstream. /metrics is scraped while a batch runs
 * and after it (counters move as they should; in flight never above the
 * limit); the upstream sees a W3C traceparent whose trace id stays the same
 * across a request's retries; the lifecycle logs name the batch's start, the
 * 429 hold and its end. And who may read /metrics.
 */
import http from "node:http";
import http2 from "node:http2";
import { Writable } from "node:stream";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { pino } from "pino";
import { afterAll, beforeAll, expect, test } from "vitest";
import { CONTROL_PLANE_DEFAULTS } from "../../src/config/config.js";
import { resolveDispatcherConfig } from "../../src/config/dispatcher-config.js";
import { type ControlPlane, startControlPlane } from "../../src/control-plane.js";
import { type Dispatcher, startDispatcher } from "../../src/dispatcher/dispatcher.js";
import { parseAllowList } from "../../src/domain/endpoints.js";
import { TokenRole } from "../../src/gen/fusillade/v1/admin_service_pb.js";
import { BatchService } from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { ReportResult_Disposition } from "../../src/gen/fusillade/v1/dispatch_service_pb.js";
import { parseTraceparent, traceIdOf } from "../../src/http/trace-context.js";
import { DispatcherMetrics } from "../../src/metrics/dispatcher-metrics.js";
import { FinishedRequests } from "../../src/metrics/finished-requests.js";
import { clients } from "../helpers/control-plane.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import {
  createTestBatch,
  items,
  startDispatcherProcess,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

/** Log lines (parsed pino JSON) of everything the control plane and dispatcher said. */
const lines: Array<Record<string, unknown>> = [];
const logger = pino(
  { level: "info" },
  new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString("utf8").split("\n")) if (l !== "") lines.push(JSON.parse(l));
      cb();
    },
  }),
);

let db: TestDatabase;
let upstream: Upstream;
let cp: ControlPlane;
let dispatcher: Dispatcher;

beforeAll(async () => {
  db = await createTestDatabase();
  upstream = await startUpstream();
  cp = await startControlPlane(
    { ...CONTROL_PLANE_DEFAULTS, port: 0, logLevel: "info", databaseUrl: db.url },
    logger,
  );
  const metrics = new DispatcherMetrics();
  dispatcher = startDispatcher(
    resolveDispatcherConfig({
      controlPlaneUrl: cp.url,
      capacity: 32,
      shutdownGraceMs: 5_000,
      shutdownFlushMs: 5_000,
      logLevel: "info",
    }),
    logger,
    { metrics },
  );
  cp.addMetricsSource(() => dispatcher.metrics());
});

afterAll(async () => {
  await dispatcher?.stop();
  await cp?.close();
  await upstream?.close();
  await db?.drop();
});

/** One sample: labels as a JSON object text, e.g. {"model":"M"}. */
type Samples = Map<string, number>;

/** Parses the text format into `name{labels}` → value (labels sorted by the exposition). */
function parse(text: string): Samples {
  const out: Samples = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

async function scrape(url = `${cp.url}/metrics`, init: RequestInit = {}): Promise<Samples> {
  const res = await fetch(url, init);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  return parse(await res.text());
}

/** A sample's value, 0 when absent. */
const v = (s: Samples, key: string) => s.get(key) ?? 0;

test("scraped during and after a batch, the counters move as they should", async () => {
  const { batch, admin } = clients(cp.url);
  const LIMIT = 3;
  const N = 30;
  /** Attempts beyond one per request: the scripted 503 and 429 below. */
  const RETRIES = 2;
  await admin.setModelLimit({ model: "M", limit: LIMIT });
  upstream.respond = () => ({ delayMs: 30 });
  // One 503 then a 200; one 429 (holding the model back a moment) then a 200.
  upstream.script("M-0", [{ status: 503 }, { status: 200 }]);
  // A 429 that reads the meter empty: the control plane holds the model fleet-wide and
  // sends the hold to the dispatcher (one counted hold); a bare 429 would hold nothing.
  upstream.script("M-1", [
    {
      status: 429,
      headers: {
        "retry-after": "1",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
      },
    },
    { status: 200 },
  ]);
  // The caller's trace: CreateBatch with a traceparent (the batch's log line names it).
  const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736";
  const traced = createClient(
    BatchService,
    createConnectTransport({
      baseUrl: cp.url,
      httpVersion: "1.1",
      interceptors: [
        (next) => (req) => {
          req.header.set("traceparent", `00-${callerTrace}-00f067aa0ba902b7-01`);
          return next(req);
        },
      ],
    }),
  );
  const batchId = await createTestBatch(traced, upstream.url, items("M", N), { maxRetries: 3 });

  // While it runs: the gauges report in flight (seen above 0) and within the limit; the
  // limit itself is measured at the upstream below.
  let peak = 0;
  let scrapes = 0;
  for (;;) {
    const s = await scrape();
    scrapes++;
    const inFlight = v(s, 'fusillade_dispatcher_in_flight{model="M"}');
    const limit = s.get('fusillade_model_limit{model="M"}');
    expect(limit).toBe(LIMIT);
    expect(inFlight).toBeLessThanOrEqual(LIMIT);
    expect(v(s, 'fusillade_model_slots_granted{model="M"}')).toBeLessThanOrEqual(LIMIT);
    peak = Math.max(peak, inFlight);
    const status = await batch.getBatchStatus({ batchId });
    if (status.counts!.pending === 0n && status.counts!.inProgress === 0n) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(peak).toBeGreaterThan(0);
  await waitForBatch(batch, batchId);
  expect(upstream.gauge("M").peak, "in flight at the upstream").toBeLessThanOrEqual(LIMIT);

  // After: every count where it should be (the finish is seen from a notification: wait for it).
  let s = await scrape();
  const deadline = Date.now() + 10_000;
  while (v(s, 'fusillade_batches_finished_total{state="completed"}') < 1 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    s = await scrape();
  }
  expect(v(s, "fusillade_batches_created_total")).toBe(1);
  expect(v(s, 'fusillade_batches_finished_total{state="completed"}')).toBe(1);
  expect(v(s, 'fusillade_dispatcher_attempts_total{model="M",status_class="2xx",code="ok"}')).toBe(
    N,
  );
  expect(
    v(s, 'fusillade_dispatcher_attempts_total{model="M",status_class="5xx",code="http_error"}'),
  ).toBe(1);
  expect(
    v(s, 'fusillade_dispatcher_attempts_total{model="M",status_class="4xx",code="http_error"}'),
  ).toBe(1);
  expect(
    v(s, 'fusillade_dispatcher_retriable_failures_total{model="M",cause="server_error"}'),
  ).toBe(1);
  expect(
    v(s, 'fusillade_dispatcher_retriable_failures_total{model="M",cause="rate_limited"}'),
  ).toBe(1);
  expect(v(s, 'fusillade_dispatcher_holds_total{model="M"}')).toBe(1);
  expect(v(s, 'fusillade_dispatcher_upstream_latency_seconds_count{model="M"}')).toBe(N + RETRIES);
  expect(v(s, 'fusillade_dispatcher_claims_total{event="acquired"}')).toBeGreaterThanOrEqual(
    N + RETRIES,
  );
  expect(v(s, 'fusillade_dispatcher_grants_total{event="granted"}')).toBeGreaterThanOrEqual(1);
  expect(v(s, 'fusillade_dispatcher_grant_wait_seconds_count{model="M"}')).toBeGreaterThanOrEqual(
    1,
  );
  expect(v(s, 'fusillade_reported_outcomes_total{kind="completion",disposition="recorded"}')).toBe(
    N,
  );
  expect(v(s, 'fusillade_reported_outcomes_total{kind="failure",disposition="requeued"}')).toBe(
    RETRIES,
  );
  expect(v(s, "fusillade_report_batch_size_sum")).toBe(N + RETRIES);
  expect(v(s, "fusillade_dispatcher_report_batch_size_sum")).toBe(N + RETRIES);
  expect(v(s, "fusillade_claims_granted_total")).toBeGreaterThanOrEqual(N + RETRIES);
  expect(v(s, 'fusillade_slot_grants_total{event="granted"}')).toBeGreaterThanOrEqual(1);
  expect(v(s, 'fusillade_dispatcher_in_flight{model="M"}')).toBe(0);
  expect(v(s, "fusillade_active_batches")).toBe(0);
  expect(s.has('fusillade_db_pool_connections{pool="general",state="total"}')).toBe(true);
  expect(s.has('fusillade_stream_subscribers{kind="watch"}')).toBe(true);
  expect(s.has("process_cpu_user_seconds_total")).toBe(true);
  expect(v(s, "fusillade_dispatchers")).toBe(1);
  console.log(`metrics: ${scrapes} scrapes while the batch ran, in flight peaked at ${peak}`);

  // Bounded labels: no batch or request id anywhere in the text.
  const text = await (await fetch(`${cp.url}/metrics`)).text();
  expect(text).not.toContain(batchId);
  for (const d of upstream.deliveries) expect(text).not.toContain(d.requestId);

  // Trace context: one trace per request across its attempts, a new span per attempt.
  expect(upstream.deliveries).toHaveLength(N + RETRIES);
  const spans = new Set<string>();
  for (const d of upstream.deliveries) {
    const tp = parseTraceparent(d.traceparent);
    expect(tp, `traceparent of ${d.customId}: ${d.traceparent}`).toBeDefined();
    expect(tp!.traceId).toBe(traceIdOf(d.requestId));
    expect(tp!.traceId).toBe(d.requestId.replaceAll("-", ""));
    spans.add(tp!.spanId);
    expect(d.batchId).toBe(batchId);
  }
  expect(spans.size).toBe(N + RETRIES);
  const retried = upstream.deliveries.filter((d) => d.customId === "M-0");
  expect(retried).toHaveLength(2);
  expect(parseTraceparent(retried[0]!.traceparent)!.traceId).toBe(
    parseTraceparent(retried[1]!.traceparent)!.traceId,
  );

  // Lifecycle logs: created, held by a 429, finished; never a key or a body.
  const created = lines.find((l) => l.msg === "batch created");
  expect(created).toMatchObject({ batchId, requests: N, traceId: callerTrace });
  const hold = lines.find(
    (l) => l.msg === "model held back: a 429 read its meter empty, nothing starts until the reset",
  );
  expect(hold).toMatchObject({ model: "M" });
  expect(Number(hold!.holdMs)).toBeGreaterThan(0);
  expect(Number(hold!.holdMs)).toBeLessThanOrEqual(1000);
  expect(Date.parse(String(hold!.until))).toBeGreaterThan(0);
  expect(lines.filter((l) => l.msg === "dispatcher joined")).toHaveLength(1);
  const finished = lines.find((l) => l.msg === "batch finished");
  expect(finished).toMatchObject({ batchId, state: "completed" });
  expect(finished!.durationMs).toBeGreaterThan(0);
  const all = JSON.stringify(lines);
  expect(all).not.toContain("sk-dispatch-test");
  expect(all).not.toContain('"messages"');
});

test("/metrics on the API port needs an admin's credential; --metrics-listen is open", async () => {
  const adminToken = "metrics-test-admin-token-0123456789";
  const other = await startControlPlane(
    {
      ...CONTROL_PLANE_DEFAULTS,
      port: 0,
      logLevel: "silent",
      databaseUrl: db.url,
      adminToken,
      metricsListen: { host: "127.0.0.1", port: 0 },
    },
    pino({ level: "silent" }),
  );
  try {
    expect((await fetch(`${other.url}/metrics`)).status).toBe(401);
    const wrong = await fetch(`${other.url}/metrics`, {
      headers: { authorization: "Bearer not-a-token" },
    });
    expect(wrong.status).toBe(401);
    const s = await scrape(`${other.url}/metrics`, {
      headers: { authorization: `Bearer ${adminToken}` },
    });
    expect(s.has("fusillade_batches_created_total")).toBe(true);
    expect(other.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const open = await scrape(other.metricsUrl!);
    expect(open.has("fusillade_active_batches")).toBe(true);
    expect((await fetch(other.metricsUrl!.replace("/metrics", "/"))).status).toBe(404);
    // Connect still answers beside it.
    const { batch } = clients(other.url, "connect-h1", adminToken);
    await batch.listBatches({});
  } finally {
    await other.close();
  }
});

test("local mode: /metrics answers a loopback Host only, over HTTP/1.1 and h2c", async () => {
  // fetch() may not set Host: a plain node:http request does.
  const status = (host: string) =>
    new Promise<number>((resolve, reject) => {
      const req = http.get(`${cp.url}/metrics`, { headers: { host } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on("error", reject);
    });
  expect(await status("evil.example:80")).toBe(403);
  expect(await status("localhost:1")).toBe(200);
  // Over h2c too (the port routes HTTP/2 by its preface): :authority is the Host.
  const session = http2.connect(cp.url);
  try {
    const h2status = (authority: string) =>
      new Promise<number>((resolve, reject) => {
        const req = session.request({ ":path": "/metrics", ":authority": authority });
        req.on("response", (h) => resolve(Number(h[":status"])));
        req.on("error", reject);
        req.resume();
      });
    expect(await h2status("127.0.0.1")).toBe(200);
    expect(await h2status("evil.example")).toBe(403);
  } finally {
    session.close();
  }
});

test("a standalone dispatcher serves its metrics on --metrics-listen", async () => {
  const p = await startDispatcherProcess({
    controlPlane: cp.url,
    id: "metrics-standalone",
    args: ["--metrics-listen", "127.0.0.1:0"],
  });
  try {
    const [, url] = await p.waitFor(
      /"url":"(http:\/\/127\.0\.0\.1:\d+\/metrics)","msg":"metrics listening"/,
    );
    const s = await scrape(url!);
    expect(s.has("fusillade_dispatcher_reports_failing")).toBe(true);
    expect(s.has("process_cpu_user_seconds_total")).toBe(true);
    expect([...s.keys()].some((k) => k.startsWith("fusillade_model_limit"))).toBe(false);
  } finally {
    await p.stop();
  }
});

test("an endpoint that answers only errors 20 times in a row is a warning, once", async () => {
  const { batch } = clients(cp.url);
  upstream.respond = (d) => (d.model === "E" ? { status: 400 } : {});
  const batchId = await createTestBatch(batch, upstream.url, items("E", 25));
  await waitForBatch(batch, batchId);
  const warnings = lines.filter((l) => String(l.msg).startsWith("endpoint answered only errors"));
  expect(warnings).toHaveLength(1);
  expect(warnings[0]).toMatchObject({
    level: 40,
    endpoint: new URL(upstream.url).origin,
    model: "E",
    failures: 20,
    last: { status: 400, code: "http_error" },
  });
});

test("claims and grants that expire unrenewed are counted when the reaper takes them back", async () => {
  // A database of its own: no other reaper or dispatcher may take these claims.
  const own = await createTestDatabase();
  const short = await startControlPlane(
    {
      ...CONTROL_PLANE_DEFAULTS,
      port: 0,
      logLevel: "silent",
      databaseUrl: own.url,
      leaseTtlMs: 1000,
      reapIntervalMs: 100,
    },
    pino({ level: "silent" }),
  );
  try {
    const { batch, dispatch } = clients(short.url);
    await createTestBatch(batch, upstream.url, items("X", 2));
    // A dispatcher that takes a grant and two claims, then is never heard from again.
    const res = await dispatch.sync({
      dispatcherId: "ghost",
      slots: [{ model: "X", token: 0n, keep: 0, want: 2, room: 2 }],
    });
    expect(res.claims).toHaveLength(2);
    let s = await scrape(`${short.url}/metrics`);
    expect(v(s, 'fusillade_slot_grants_total{event="granted"}')).toBe(1);
    expect(v(s, "fusillade_claims_granted_total")).toBe(2);
    const deadline = Date.now() + 15_000;
    while (
      (v(s, "fusillade_claims_expired_total") < 2 ||
        v(s, 'fusillade_slot_grants_total{event="expired"}') < 1) &&
      Date.now() < deadline
    ) {
      await new Promise((r) => setTimeout(r, 100));
      s = await scrape(`${short.url}/metrics`);
    }
    expect(v(s, "fusillade_claims_expired_total")).toBe(2);
    expect(v(s, 'fusillade_slot_grants_total{event="expired"}')).toBe(1);
    expect(v(s, "fusillade_dispatchers")).toBe(1);
  } finally {
    await short.close();
    await own.drop();
  }
});

test("claims in flight per tenant and model, and tenant weights, read at scrape time", async () => {
  // A database of its own with tokens: two client tenants, and nothing else claiming.
  const own = await createTestDatabase();
  const adminToken = "metrics-fair-admin-token-0123456789";
  const guarded = await startControlPlane(
    {
      ...CONTROL_PLANE_DEFAULTS,
      port: 0,
      logLevel: "silent",
      databaseUrl: own.url,
      adminToken,
      // With tokens, loopback is refused unless listed: the test upstream is on loopback.
      allowedEndpoints: parseAllowList("http://127.0.0.1:*", "test"),
    },
    pino({ level: "silent" }),
  );
  try {
    const { admin } = clients(guarded.url, "connect-h2", adminToken);
    const tokenOf = async (role: TokenRole, tenant = "") =>
      (await admin.createToken({ role, tenant, name: tenant || "fleet" })).secret;
    const acme = clients(guarded.url, "connect-h2", await tokenOf(TokenRole.CLIENT, "acme"));
    const beta = clients(guarded.url, "connect-h2", await tokenOf(TokenRole.CLIENT, "beta"));
    const { dispatch } = clients(guarded.url, "connect-h2", await tokenOf(TokenRole.DISPATCHER));
    const acmeBatch = await createTestBatch(acme.batch, upstream.url, [
      ...items("X", 3),
      ...items("Y", 2),
    ]);
    const betaBatch = await createTestBatch(beta.batch, upstream.url, items("X", 3));
    await admin.setTenantWeight({ tenant: "acme", weight: 3 });
    const read = () =>
      scrape(`${guarded.url}/metrics`, { headers: { authorization: `Bearer ${adminToken}` } });
    const series = (s: Samples, name: string) =>
      [...s.entries()].filter(([k]) => k.startsWith(`${name}{`)).sort();

    // Nothing claimed yet: no series at all; the weight set is there.
    let s = await read();
    expect(series(s, "fusillade_claims_in_flight")).toEqual([]);
    expect(series(s, "fusillade_tenant_weight")).toEqual([
      ['fusillade_tenant_weight{tenant="acme"}', 3],
    ]);

    // A dispatcher claims 4 of X (of 6 pending, both tenants) and 2 of Y (acme's).
    const res = await dispatch.sync({
      dispatcherId: "metrics-fair",
      slots: [
        { model: "X", token: 0n, keep: 0, want: 4, room: 4 },
        { model: "Y", token: 0n, keep: 0, want: 2, room: 2 },
      ],
    });
    expect(res.claims).toHaveLength(6);
    const tenantOf = new Map([
      [acmeBatch, "acme"],
      [betaBatch, "beta"],
    ]);
    const expected = new Map<string, number>();
    for (const c of res.claims) {
      const key = `fusillade_claims_in_flight{tenant="${tenantOf.get(c.batchId)}",model="${c.model}"}`;
      expected.set(key, (expected.get(key) ?? 0) + 1);
    }
    // Both tenants got some of X (fair share), acme all of Y.
    expect(expected.get('fusillade_claims_in_flight{tenant="acme",model="X"}')).toBeGreaterThan(0);
    expect(expected.get('fusillade_claims_in_flight{tenant="beta",model="X"}')).toBeGreaterThan(0);
    expect(expected.get('fusillade_claims_in_flight{tenant="acme",model="Y"}')).toBe(2);
    s = await read();
    expect(series(s, "fusillade_claims_in_flight")).toEqual([...expected.entries()].sort());

    // beta's claims end (completed): its series goes at the next scrape; acme's stay.
    const betaClaims = res.claims.filter((c) => c.batchId === betaBatch);
    const done = await dispatch.reportResults({
      dispatcherId: "metrics-fair",
      outcomes: betaClaims.map((c) => ({
        ref: c.ref,
        result: {
          case: "completion" as const,
          value: { statusCode: 200, body: new TextEncoder().encode("{}"), headers: {} },
        },
      })),
    });
    expect(done.results.map((r) => r.disposition)).toEqual(
      betaClaims.map(() => ReportResult_Disposition.RECORDED),
    );
    s = await read();
    expect(series(s, "fusillade_claims_in_flight")).toEqual(
      [...expected.entries()].filter(([k]) => !k.includes('tenant="beta"')).sort(),
    );

    // A weight cleared: its series goes too.
    await admin.setTenantWeight({ tenant: "acme", clearWeight: true });
    await admin.setTenantWeight({ tenant: "beta", weight: 7 });
    s = await read();
    expect(series(s, "fusillade_tenant_weight")).toEqual([
      ['fusillade_tenant_weight{tenant="beta"}', 7],
    ]);
  } finally {
    await guarded.close();
    await own.drop();
  }
});

test("requests finished per model and outcome, and waiting per model, in the CLI's state names", async () => {
  const { batch, admin } = clients(cp.url);
  upstream.respond = () => ({ delayMs: 1 });
  // One model (counted from the batch's counters): one 400 fails for good.
  upstream.script("F1-0", [{ status: 400 }]);
  const one = await createTestBatch(batch, upstream.url, items("F1", 3));
  // Two models (counted from the change log, per model).
  const two = await createTestBatch(batch, upstream.url, [...items("F2", 2), ...items("F3", 1)]);
  await waitForBatch(batch, one);
  await waitForBatch(batch, two);
  // A paused model: its requests wait, then are cancelled with their batch.
  await admin.setModelLimit({ model: "F4", limit: 0 });
  const paused = await createTestBatch(batch, upstream.url, items("F4", 2));
  let s = await scrape();
  expect(v(s, 'fusillade_model_requests{model="F4",state="pending"}')).toBe(2);
  expect(v(s, 'fusillade_model_requests{model="F4",state="in_progress"}')).toBe(0);
  expect(v(s, 'fusillade_active_batch_requests{state="pending"}')).toBe(2);
  // One vocabulary: the CLI's state names, not the columns'.
  expect(s.has('fusillade_active_batch_requests{state="in_progress"}')).toBe(true);
  expect(s.has('fusillade_active_batch_requests{state="cancelled"}')).toBe(true);
  expect([...s.keys()].filter((k) => /"(leased|canceled)"/.test(k))).toEqual([]);
  await batch.cancelBatch({ batchId: paused });

  const finished = (model: string, outcome: string) =>
    v(s, `fusillade_requests_finished_total{model="${model}",outcome="${outcome}"}`);
  const deadline = Date.now() + 10_000;
  while (finished("F4", "cancelled") < 2 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    s = await scrape();
  }
  expect(finished("F1", "completed")).toBe(2);
  expect(finished("F1", "failed")).toBe(1);
  expect(finished("F2", "completed")).toBe(2);
  expect(finished("F3", "completed")).toBe(1);
  expect(finished("F4", "cancelled")).toBe(2);
  expect(finished("F4", "completed")).toBe(0);
});

test("a finished batch's requests are counted once, however often its end is read", async () => {
  const { batch } = clients(cp.url);
  upstream.respond = () => ({ delayMs: 1 });
  // Two models (counted from the change log) and one (from the batch's counters).
  const two = await createTestBatch(batch, upstream.url, [...items("E1", 3), ...items("E2", 2)]);
  const one = await createTestBatch(batch, upstream.url, items("E3", 2));
  await waitForBatch(batch, two);
  await waitForBatch(batch, one);
  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  try {
    const counted = new Map<string, number>();
    const finished = new FinishedRequests(
      { query: (text, params) => pool.query(typeof text === "string" ? text : text.text, params) },
      (model, outcome, n) =>
        counted.set(`${model} ${outcome}`, (counted.get(`${model} ${outcome}`) ?? 0) + n),
    );
    // The reading that sees the end, then notifications of the same batches that come after
    // it (two statements, two flushes): nothing more is counted.
    await finished.observe([two, one]);
    await finished.observe([two, one]);
    await finished.observe([one]);
    expect([...counted].sort()).toEqual([
      ["E1 completed", 3],
      ["E2 completed", 2],
      ["E3 completed", 2],
    ]);
  } finally {
    await pool.end();
  }
});
