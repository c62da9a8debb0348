/**
 * The control plane's Prometheus metrics (docs/observability.md): Node's
 * process metrics, counters bumped by the lease service and the batch
 * lifecycle watcher, and gauges read at scrape time from small tables (model
 * limits, slot grants, the unfinished batches' counter columns, tenants) and
 * the claimed requests (the partial index requests_leased_batch: at most the
 * fleet's slots and buffers) — never a scan of `requests`. Labels are
 * bounded: no batch or request; tenants (few: one per client team) only on
 * the fair-share gauges.
 *
 * src/metrics/ owns the Prometheus registries (control plane and dispatcher),
 * the batch lifecycle watcher, the fleet table and serving /metrics. It may
 * import src/storage, src/auth, src/domain, the logger and the plain-route
 * types (src/plain-route.ts), never src/api.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { Db } from "../storage/db.js";

/**
 * ModelsNow: per model with a limit row or an unexpired grant, its limit
 * (the default when unset), the slots granted fleet-wide, and the seconds
 * left on a 429 hold. Params: default limit. Reads model_limits and
 * slot_grants (a row per model and holder).
 */
const MODELS_NOW = `
  WITH g AS (
    SELECT model, sum(slots)::int AS slots FROM slot_grants WHERE expires_at > now() GROUP BY model
  )
  SELECT m.model, COALESCE(l.max_in_flight, $1::int) AS lim, COALESCE(g.slots, 0) AS slots,
         GREATEST(0, COALESCE(extract(epoch FROM (l.hold_until - now())), 0))::float8 AS hold_s
  FROM (SELECT model FROM model_limits UNION SELECT model FROM g) m
  LEFT JOIN model_limits l USING (model) LEFT JOIN g USING (model)`;

/**
 * ActiveBatchCounts: how many batches are unfinished, and their requests by
 * state, summed from the batches' counter columns (kept by the requests
 * trigger). No params. Uses the partial index batches_unfinished_expiry.
 */
const ACTIVE_BATCH_COUNTS = `
  SELECT count(*)::int AS batches,
         COALESCE(sum(pending_count), 0)::int AS pending,
         COALESCE(sum(leased_count), 0)::int AS leased,
         COALESCE(sum(completed_count), 0)::int AS completed,
         COALESCE(sum(failed_count), 0)::int AS failed,
         COALESCE(sum(canceled_count), 0)::int AS canceled,
         COALESCE(sum(expired_count), 0)::int AS expired
  FROM batches WHERE finished_at IS NULL`;

/**
 * ClaimsByTenant: requests claimed by dispatchers now (running or buffered),
 * per tenant and model. No params. Reads the leased rows only (partial index
 * requests_leased_batch), which the limits and the dispatchers' buffers bound.
 */
const CLAIMS_BY_TENANT = `
  SELECT tenant, model, count(*)::int AS claims
  FROM requests WHERE state = 'leased' GROUP BY tenant, model`;

/**
 * ModelRequestsNow: per model, the requests of unfinished batches waiting
 * (pending) and claimed (in_progress). A batch whose file has one model
 * gives its counter columns (no request read); a batch of several models
 * (or whose file was deleted) has its unfinished rows counted (index
 * requests_batch_state). No params.
 */
const MODEL_REQUESTS_NOW = `
  WITH open AS (
    SELECT b.id, b.pending_count, b.leased_count, f.models
    FROM batches b LEFT JOIN files f ON f.id = b.file_id WHERE b.finished_at IS NULL
  )
  SELECT model, sum(pending)::int AS pending, sum(in_progress)::int AS in_progress FROM (
    SELECT models[1] AS model, pending_count AS pending, leased_count AS in_progress
    FROM open WHERE cardinality(models) = 1
    UNION ALL
    SELECT r.model, (r.state = 'pending')::int, (r.state = 'leased')::int
    FROM open o JOIN requests r ON r.batch_id = o.id AND r.state IN ('pending', 'leased')
    WHERE o.models IS NULL OR cardinality(o.models) <> 1
  ) x GROUP BY model`;

/** TenantWeights: the tenants with a weight set (fair share). No params. Reads `tenants`. */
const TENANT_WEIGHTS = `SELECT name, weight FROM tenants`;

/** Request states by the names the CLI and the API's JSON use (the column names in brackets). */
const REQUEST_STATES = [
  ["pending", "pending"],
  ["in_progress", "leased"],
  ["completed", "completed"],
  ["failed", "failed"],
  ["cancelled", "canceled"],
  ["expired", "expired"],
] as const;

export class ControlPlaneMetrics {
  readonly registry = new Registry();
  readonly #slotGrants: Counter<"event">;
  readonly #claimsExpired: Counter;
  readonly #endedWithBatch: Counter;
  readonly #claims: Counter;
  readonly #reports: Counter<"kind" | "disposition">;
  readonly #reportSize: Histogram;
  readonly #batchesCreated: Counter;
  readonly #batchesFinished: Counter<"state">;
  readonly #requestsFinished: Counter<"model" | "outcome">;
  readonly #subscribers: Gauge<"kind">;
  readonly #retentionDeleted: Counter<"kind">;
  readonly #retentionPasses: Counter<"outcome">;
  readonly #retentionPassSeconds: Histogram;
  #dispatchers: () => number = () => 0;

  /**
   * `db`: read at scrape time; `defaultLimit`: a model's limit when none is
   * set; `processMetrics`: Node's process metrics (off in tests that build several).
   */
  constructor(
    private readonly db: Db,
    private readonly defaultLimit: number,
    options: { processMetrics?: boolean } = {},
  ) {
    const registers = [this.registry];
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry });
    this.#slotGrants = new Counter({
      name: "fusillade_slot_grants_total",
      help: "Slot grants by event: granted (a new grant), renewed, lost (a stale or expired token), expired (deleted by the reaper, not renewed).",
      labelNames: ["event"],
      registers,
    });
    this.#retentionDeleted = new Counter({
      name: "fusillade_retention_deleted_rows_total",
      help: "Rows deleted by retention (docs/operations.md), by kind: batches, requests, events (request_events), files, templates (request_templates).",
      labelNames: ["kind"],
      registers,
    });
    this.#retentionPasses = new Counter({
      name: "fusillade_retention_passes_total",
      help: "Retention passes by outcome: done, skipped (another replica held the lock), failed.",
      labelNames: ["outcome"],
      registers,
    });
    this.#retentionPassSeconds = new Histogram({
      name: "fusillade_retention_pass_seconds",
      help: "How long a retention pass that ran took, pauses between chunks included.",
      buckets: [0.01, 0.1, 1, 10, 60, 600],
      registers,
    });
    this.#claimsExpired = new Counter({
      name: "fusillade_claims_expired_total",
      help: "Request claims that expired unrenewed (their dispatcher died or fell silent): put back by the reaper.",
      registers,
    });
    this.#endedWithBatch = new Counter({
      name: "fusillade_requests_ended_with_batch_total",
      help: "Pending requests ended by the reaper because their batch was cancelled or expired.",
      registers,
    });
    this.#claims = new Counter({
      name: "fusillade_claims_granted_total",
      help: "Request claims handed to dispatchers.",
      registers,
    });
    this.#reports = new Counter({
      name: "fusillade_reported_outcomes_total",
      help: "Outcomes reported by dispatchers, by kind (completion, failure, release) and disposition (recorded, requeued, lost).",
      labelNames: ["kind", "disposition"],
      registers,
    });
    this.#reportSize = new Histogram({
      name: "fusillade_report_batch_size",
      help: "Outcomes in one ReportResults call.",
      buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
      registers,
    });
    this.#batchesCreated = new Counter({
      name: "fusillade_batches_created_total",
      help: "Batches created through this control plane.",
      registers,
    });
    this.#requestsFinished = new Counter({
      name: "fusillade_requests_finished_total",
      help: "Requests that reached a terminal state, per model and outcome (completed, failed, cancelled, expired): every replica counts every request (aggregate with max).",
      labelNames: ["model", "outcome"],
      registers,
    });
    this.#batchesFinished = new Counter({
      name: "fusillade_batches_finished_total",
      help: "Batches this control plane saw finish, by final state (completed, failed, cancelled, expired).",
      labelNames: ["state"],
      registers,
    });
    this.#subscribers = new Gauge({
      name: "fusillade_stream_subscribers",
      help: "Open WatchBatch and StreamBatchRequests streams.",
      labelNames: ["kind"],
      registers,
    });
    this.#subscribers.set({ kind: "watch" }, 0);
    this.#subscribers.set({ kind: "requests" }, 0);
    const self = this;
    new Gauge({
      name: "fusillade_dispatchers",
      help: "Dispatchers that called this control plane recently (joined and not yet left).",
      registers,
      collect() {
        this.set(self.#dispatchers());
      },
    });
    // One query feeds the model gauges and one the batch gauges: the registry
    // collects every metric at once, so each gauge awaits the shared read.
    type ModelRow = { model: string; lim: number; slots: number; hold_s: number };
    const modelGauge = (name: string, help: string, value: (r: ModelRow) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ["model"],
        registers,
        async collect() {
          const rows = await self.#shared("models", () =>
            self.#query<ModelRow>(MODELS_NOW, [self.defaultLimit]),
          );
          this.reset();
          for (const r of rows) this.set({ model: r.model }, value(r));
        },
      });
    modelGauge(
      "fusillade_model_limit",
      "A model's concurrency limit (fleet-wide): compare with sum by (model) (fusillade_dispatcher_in_flight).",
      (r) => r.lim,
    );
    modelGauge(
      "fusillade_model_slots_granted",
      "Slots of a model held by dispatchers now (never above its limit).",
      (r) => r.slots,
    );
    modelGauge(
      "fusillade_model_hold_seconds",
      "Seconds left on a model's 429 hold (0: not held).",
      (r) => r.hold_s,
    );
    type ActiveRow = Record<(typeof REQUEST_STATES)[number][1] | "batches", number>;
    const activeNow = () =>
      self.#shared("active", () => self.#query<ActiveRow>(ACTIVE_BATCH_COUNTS, []));
    new Gauge({
      name: "fusillade_active_batches",
      help: "Batches not finished yet.",
      registers,
      async collect() {
        const [r] = await activeNow();
        if (r !== undefined) this.set(r.batches);
      },
    });
    new Gauge({
      name: "fusillade_active_batch_requests",
      help: "Requests of the unfinished batches, by state (pending, in_progress, completed, failed, cancelled, expired; from the batches' counters).",
      labelNames: ["state"],
      registers,
      async collect() {
        const [r] = await activeNow();
        if (r !== undefined) for (const [state, col] of REQUEST_STATES) this.set({ state }, r[col]);
      },
    });
    new Gauge({
      name: "fusillade_model_requests",
      help: "Requests of the unfinished batches per model: pending (waiting for a claim) and in_progress (claimed by a dispatcher: running or buffered for a slot).",
      labelNames: ["model", "state"],
      registers,
      async collect() {
        const rows = await self.#query<{ model: string; pending: number; in_progress: number }>(
          MODEL_REQUESTS_NOW,
          [],
        );
        this.reset();
        for (const r of rows) {
          this.set({ model: r.model, state: "pending" }, r.pending);
          this.set({ model: r.model, state: "in_progress" }, r.in_progress);
        }
      },
    });
    new Gauge({
      name: "fusillade_claims_in_flight",
      help: "Requests claimed by dispatchers now (running or buffered for a slot), per tenant and model: fair share's measure (docs/fair-share.md). Only tenants with claims appear.",
      labelNames: ["tenant", "model"],
      registers,
      async collect() {
        const rows = await self.#query<{ tenant: string; model: string; claims: number }>(
          CLAIMS_BY_TENANT,
          [],
        );
        this.reset();
        for (const r of rows) this.set({ tenant: r.tenant, model: r.model }, r.claims);
      },
    });
    new Gauge({
      name: "fusillade_tenant_weight",
      help: "A tenant's weight in fair share, for the tenants with one set (the others weigh 1).",
      labelNames: ["tenant"],
      registers,
      async collect() {
        const rows = await self.#query<{ name: string; weight: number }>(TENANT_WEIGHTS, []);
        this.reset();
        for (const r of rows) this.set({ tenant: r.name }, r.weight);
      },
    });
    new Gauge({
      name: "fusillade_db_pool_connections",
      help: "Database pool connections by pool (general, dispatch) and state (total, idle, waiting: callers queued for one).",
      labelNames: ["pool", "state"],
      registers,
      collect() {
        const pools: Array<[string, Db["pool"]]> = [["general", self.db.pool]];
        if (self.db.dispatch !== self.db) pools.push(["dispatch", self.db.dispatch.pool]);
        for (const [pool, p] of pools) {
          this.set({ pool, state: "total" }, p.totalCount);
          this.set({ pool, state: "idle" }, p.idleCount);
          this.set({ pool, state: "waiting" }, p.waitingCount);
        }
      },
    });
  }

  readonly #reads = new Map<string, Promise<unknown[]>>();

  /** One read shared by the gauges of a scrape (and by scrapes at the same moment). */
  #shared<T>(key: string, read: () => Promise<T[]>): Promise<T[]> {
    const running = this.#reads.get(key);
    if (running !== undefined) return running as Promise<T[]>;
    const rows = read().finally(() => this.#reads.delete(key));
    this.#reads.set(key, rows);
    return rows;
  }

  /** Rows of a scrape-time query; none when the database does not answer (the scrape still works). */
  async #query<T>(text: string, params: unknown[]): Promise<T[]> {
    try {
      return (await this.db.query(text, params)).rows as T[];
    } catch {
      return [];
    }
  }

  slotGrant(event: "granted" | "renewed" | "lost", n = 1): void {
    if (n > 0) this.#slotGrants.inc({ event }, n);
  }

  /** What a reaper pass did. */
  reaped(c: { reaped: number; ended: number; grantsExpired: number }): void {
    if (c.reaped > 0) this.#claimsExpired.inc(c.reaped);
    if (c.ended > 0) this.#endedWithBatch.inc(c.ended);
    if (c.grantsExpired > 0) this.#slotGrants.inc({ event: "expired" }, c.grantsExpired);
  }

  /** What a retention pass did (counts undefined: skipped or failed). */
  retentionPass(
    outcome: "done" | "skipped" | "failed",
    seconds: number,
    deleted?: Readonly<Record<string, number>>,
  ): void {
    this.#retentionPasses.inc({ outcome });
    if (outcome !== "skipped") this.#retentionPassSeconds.observe(seconds);
    for (const [kind, n] of Object.entries(deleted ?? {})) {
      if (n > 0) this.#retentionDeleted.inc({ kind }, n);
    }
  }

  claimsGranted(n: number): void {
    if (n > 0) this.#claims.inc(n);
  }

  reported(kind: string, disposition: string): void {
    this.#reports.inc({ kind, disposition });
  }

  reportBatch(size: number): void {
    this.#reportSize.observe(size);
  }

  batchCreated(): void {
    this.#batchesCreated.inc();
  }

  /** `n` requests of `model` reached `outcome`. */
  finished(model: string, outcome: string, n: number): void {
    if (n > 0) this.#requestsFinished.inc({ model, outcome }, n);
  }

  batchFinished(state: string): void {
    this.#batchesFinished.inc({ state });
  }

  /** Where fusillade_dispatchers reads its count. */
  countDispatchers(count: () => number): void {
    this.#dispatchers = count;
  }

  /** A stream opened; call the result when it closes. */
  subscribed(kind: "watch" | "requests"): () => void {
    this.#subscribers.inc({ kind });
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#subscribers.dec({ kind });
    };
  }

  /** The text exposition format. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}
