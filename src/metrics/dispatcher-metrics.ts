/**
 * A dispatcher's Prometheus metrics (docs/observability.md). One registry per
 * dispatcher; under `serve` it lives in the dispatcher's thread and the
 * control plane's /metrics appends its text (./metrics-http.ts).
 *
 * Labels are bounded: `model` (the models the fleet serves), `status_class`
 * (2xx…5xx, none), `code` (the FailureCode enum), `cause`, `event`. Never a
 * batch, request or tenant.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { PACING_MODES, type PacingView } from "../domain/capacity.js";
import type { AttemptOutcome } from "../domain/outcome.js";

/** What the gauges read at scrape time: per model, the dispatcher's book. */
export interface DispatcherGaugeSource {
  models(): Iterable<{
    model: string;
    running: number;
    slots: number;
    buffered: number;
    held: boolean;
    /** This dispatcher's rate shares (undefined: no such rate). */
    rpm?: number | undefined;
    tpm?: number | undefined;
    /** How it paces the model (undefined before its first attempt). */
    pacing?: PacingView | undefined;
  }>;
  reportsPending(): number;
  reportsFailing(): boolean;
}

/** Latency buckets, seconds: LLM calls run from milliseconds to minutes. */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
/** Outcomes per ReportResults call (the reporter's batch size caps it). */
const REPORT_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

/** `2xx`…`5xx` for a status, `none` when no response came. */
export function statusClass(status: number): string {
  return status >= 100 && status < 600 ? `${Math.floor(status / 100)}xx` : "none";
}

/** Why a retriable attempt will be retried: a bounded cause. */
export function retryCause(o: Extract<AttemptOutcome, { kind: "failure" }>): string {
  if (o.code !== "http_error") return o.code;
  if (o.statusCode === 429) return "rate_limited";
  if (o.statusCode === 408) return "request_timeout";
  if (o.statusCode >= 500) return "server_error";
  return "http_error";
}

export class DispatcherMetrics {
  readonly registry = new Registry();
  readonly #attempts: Counter<"model" | "status_class" | "code">;
  readonly #retriable: Counter<"model" | "cause">;
  readonly #holds: Counter<"model">;
  readonly #latency: Histogram<"model">;
  readonly #claims: Counter<"event">;
  readonly #grants: Counter<"event">;
  readonly #grantWait: Histogram<"model">;
  readonly #reportSize: Histogram;
  #source: DispatcherGaugeSource | undefined;

  /** `processMetrics`: also Node's process metrics (a dispatcher in its own process). */
  constructor(options: { processMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.processMetrics) collectDefaultMetrics({ register: this.registry });
    this.#attempts = new Counter({
      name: "fusillade_dispatcher_attempts_total",
      help: "Upstream attempts that ended, by model, status class (none: no response) and code (ok or the failure code).",
      labelNames: ["model", "status_class", "code"],
      registers,
    });
    this.#retriable = new Counter({
      name: "fusillade_dispatcher_retriable_failures_total",
      help: "Attempts that failed in a retriable way, by cause (rate_limited, server_error, request_timeout, timeout, network_error).",
      labelNames: ["model", "cause"],
      registers,
    });
    this.#holds = new Counter({
      name: "fusillade_dispatcher_holds_total",
      help: "Holds the control plane sent: a model's meter read empty fleet-wide, nothing of it starts until its reset.",
      labelNames: ["model"],
      registers,
    });
    this.#latency = new Histogram({
      name: "fusillade_dispatcher_upstream_latency_seconds",
      help: "Time of one upstream attempt, start to outcome (body read).",
      labelNames: ["model"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.#claims = new Counter({
      name: "fusillade_dispatcher_claims_total",
      help: "Request claims by event: acquired, lost (the control plane said so), fenced (not renewed in time), released (given back).",
      labelNames: ["event"],
      registers,
    });
    this.#grants = new Counter({
      name: "fusillade_dispatcher_grants_total",
      help: "Slot grants by event: granted (new), renewed, lost, fenced.",
      labelNames: ["event"],
      registers,
    });
    this.#grantWait = new Histogram({
      name: "fusillade_dispatcher_grant_wait_seconds",
      help: "Time from first asking for a model's slot grant to getting one.",
      labelNames: ["model"],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300],
      registers,
    });
    this.#reportSize = new Histogram({
      name: "fusillade_dispatcher_report_batch_size",
      help: "Outcomes carried by one ReportResults call.",
      buckets: REPORT_BUCKETS,
      registers,
    });
    const self = this;
    new Gauge({
      name: "fusillade_dispatcher_in_flight",
      help: "Requests of a model being sent now by this dispatcher (compare with fusillade_model_limit).",
      labelNames: ["model"],
      registers,
      collect() {
        this.reset();
        for (const m of self.#source?.models() ?? []) this.set({ model: m.model }, m.running);
      },
    });
    new Gauge({
      name: "fusillade_dispatcher_slots",
      help: "Slots of a model this dispatcher holds now (its share of the limit).",
      labelNames: ["model"],
      registers,
      collect() {
        this.reset();
        for (const m of self.#source?.models() ?? []) this.set({ model: m.model }, m.slots);
      },
    });
    new Gauge({
      name: "fusillade_dispatcher_buffered",
      help: "Claims of a model waiting for a slot in this dispatcher's buffer.",
      labelNames: ["model"],
      registers,
      collect() {
        this.reset();
        for (const m of self.#source?.models() ?? []) this.set({ model: m.model }, m.buffered);
      },
    });
    new Gauge({
      name: "fusillade_dispatcher_model_held",
      help: "1 while a model is held back by a 429 here.",
      labelNames: ["model"],
      registers,
      collect() {
        this.reset();
        for (const m of self.#source?.models() ?? []) this.set({ model: m.model }, m.held ? 1 : 0);
      },
    });
    new Gauge({
      name: "fusillade_dispatcher_effective_concurrency",
      help: "Attempts of a model that may run at once here now: the adaptive limit within the slots (docs/pacing.md).",
      labelNames: ["model"],
      registers,
      collect() {
        this.reset();
        for (const m of self.#source?.models() ?? []) {
          if (m.pacing) this.set({ model: m.model }, m.pacing.concurrency);
        }
      },
    });
    new Gauge({
      name: "fusillade_dispatcher_rate_share",
      help: "This dispatcher's share of a model's rate, per minute (unit: requests or tokens).",
      labelNames: ["model", "unit"],
      registers,
      collect() {
        this.reset();
        for (const m of self.#source?.models() ?? []) {
          if (m.rpm !== undefined) this.set({ model: m.model, unit: "requests" }, m.rpm);
          if (m.tpm !== undefined) this.set({ model: m.model, unit: "tokens" }, m.tpm);
        }
      },
    });
    new Gauge({
      name: "fusillade_dispatcher_pacing_mode",
      help: "1 for how a model is paced here now: held, backing_off, paced or free.",
      labelNames: ["model", "mode"],
      registers,
      collect() {
        this.reset();
        for (const m of self.#source?.models() ?? []) {
          if (!m.pacing) continue;
          for (const mode of PACING_MODES) {
            this.set({ model: m.model, mode }, m.pacing.mode === mode ? 1 : 0);
          }
        }
      },
    });
    new Gauge({
      name: "fusillade_dispatcher_answers_last_minute",
      help: "Calls of a model answered in the last minute (answer: all, or throttled: 429, or 503 with Retry-After).",
      labelNames: ["model", "answer"],
      registers,
      collect() {
        this.reset();
        for (const m of self.#source?.models() ?? []) {
          if (!m.pacing) continue;
          this.set({ model: m.model, answer: "all" }, m.pacing.callsLastMinute);
          this.set({ model: m.model, answer: "throttled" }, m.pacing.throttledLastMinute);
        }
      },
    });
    new Gauge({
      name: "fusillade_dispatcher_reports_pending",
      help: "Outcomes queued or in flight to the control plane.",
      registers,
      collect() {
        this.set(self.#source?.reportsPending() ?? 0);
      },
    });
    new Gauge({
      name: "fusillade_dispatcher_reports_failing",
      help: "1 while reports fail (no new work starts meanwhile).",
      registers,
      collect() {
        this.set(self.#source?.reportsFailing() ? 1 : 0);
      },
    });
  }

  /** Where the gauges read from (the dispatcher, once built). */
  bind(source: DispatcherGaugeSource): void {
    this.#source = source;
  }

  /** One attempt ended after `seconds`. */
  attempt(model: string, o: AttemptOutcome, seconds: number): void {
    const code = o.kind === "completion" ? "ok" : o.code;
    this.#attempts.inc({ model, status_class: statusClass(o.statusCode), code });
    // Our own aborts (fence, shutdown) are not upstream latency.
    if (code !== "aborted") this.#latency.observe({ model }, seconds);
    if (o.kind === "failure" && o.retriable) this.#retriable.inc({ model, cause: retryCause(o) });
  }

  hold(model: string): void {
    this.#holds.inc({ model });
  }

  claims(event: "acquired" | "lost" | "fenced" | "released", n = 1): void {
    if (n > 0) this.#claims.inc({ event }, n);
  }

  grants(event: "granted" | "renewed" | "lost" | "fenced", n = 1): void {
    if (n > 0) this.#grants.inc({ event }, n);
  }

  grantWait(model: string, seconds: number): void {
    this.#grantWait.observe({ model }, seconds);
  }

  reportBatch(size: number): void {
    this.#reportSize.observe(size);
  }

  /** The text exposition format. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}
