/**
 * Model-scoped leases: granting (never past a model's fleet-wide limit),
 * renewing, recording outcomes, releasing. The database is the judge: every
 * transition is a guarded UPDATE on (id, lease token, state = 'leased'); a
 * zero-row answer is a lost lease, reported as such and changing nothing.
 *
 * Modes of a grant, per model: held (a 429's Retry-After has not passed) →
 * skipped; full (leases held >= limit) → nothing; otherwise up to
 * limit - held leases, oldest requests first.
 */
import { randomInt } from "node:crypto";
import type { AttemptFailure } from "../domain/outcome.js";
import { decideRetry } from "../domain/retry-policy.js";
import type { Db } from "../storage/db.js";
import { type Notifications, WORK_CHANNEL } from "../storage/notifications.js";
import * as sql from "./sql.js";

export interface LeaseServiceConfig {
  defaultLimit: number;
  leaseTtlMs: number;
  maxAcquireWaitMs: number;
}

/** A granted lease, as the dispatcher needs it. */
export interface GrantedLease {
  requestId: string;
  token: bigint;
  batchId: string;
  customId: string | null;
  model: string;
  attempt: number;
  method: string;
  url: string;
  headers: Array<[string, string]>;
  body: string;
  expiresAt: Date;
  ttlMs: number;
}

export interface LeaseRef {
  requestId: string;
  token: bigint;
}

export type LossReason = "expired" | "batch_cancelled" | "batch_expired" | "not_current";

export type Outcome =
  | {
      ref: LeaseRef;
      kind: "completion";
      statusCode: number;
      headers: Record<string, string>;
      body: string;
    }
  | ({ ref: LeaseRef } & Omit<AttemptFailure, "bodyExcerpt"> & { bodyExcerpt: string })
  | { ref: LeaseRef; kind: "release"; reason: string };

export type Disposition = "recorded" | "requeued" | "lost";

/** Upper bound on leases handed out by one AcquireLeases call. */
export const MAX_LEASES_PER_CALL = 1000;

interface GrantRow {
  id: string;
  batch_id: string;
  custom_id: string | null;
  model: string;
  attempt: number;
  method: string;
  endpoint: string;
  path: string;
  body: string;
  api_key: string | null;
  lease_token: string;
  lease_expires_at: Date;
  ttl_ms: number;
}

function toLease(r: GrantRow): GrantedLease {
  const headers: Array<[string, string]> = [];
  if (r.body !== "") headers.push(["content-type", "application/json"]);
  if (r.api_key) headers.push(["authorization", `Bearer ${r.api_key}`]);
  headers.push(["x-fusillade-request-id", r.id]);
  if (r.custom_id !== null) headers.push(["x-fusillade-custom-id", r.custom_id]);
  return {
    requestId: r.id,
    token: BigInt(r.lease_token),
    batchId: r.batch_id,
    customId: r.custom_id,
    model: r.model,
    attempt: r.attempt,
    method: r.method,
    url: r.endpoint + r.path,
    headers,
    body: r.body,
    expiresAt: r.lease_expires_at,
    ttlMs: Math.max(0, Math.floor(Number(r.ttl_ms))),
  };
}

function shuffle<T>(xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

export class LeaseService {
  constructor(
    private readonly db: Db,
    private readonly notifications: Notifications,
    private readonly config: LeaseServiceConfig,
  ) {}

  /**
   * Grants up to `max` leases for `models` (all when empty), waiting up to
   * `waitMs` for work or capacity. Wakes on NOTIFY (new work, freed
   * capacity, raised limit) and at the next scheduled moment (a retry's
   * not_before, a lease expiry, a hold's end), never on a polling timer.
   */
  async acquire(opts: {
    holder: string;
    max: number;
    models: string[];
    waitMs: number;
    signal: AbortSignal;
  }): Promise<GrantedLease[]> {
    const max = Math.min(opts.max, MAX_LEASES_PER_CALL);
    if (max <= 0) return [];
    const deadline = Date.now() + Math.min(Math.max(0, opts.waitMs), this.config.maxAcquireWaitMs);
    const wanted = new Set(opts.models);
    // Subscribe before looking, so a notification between look and wait is not lost.
    let dirty = false;
    let wake: (() => void) | undefined;
    const off = this.notifications.on(WORK_CHANNEL, (model) => {
      if (model === "*" || wanted.size === 0 || wanted.has(model)) {
        dirty = true;
        wake?.();
      }
    });
    try {
      for (;;) {
        // Woken by an abort (the caller left, the server stops): grant nothing
        // that nobody may be there to receive.
        if (opts.signal.aborted) return [];
        dirty = false;
        const leases = await this.grant(opts.holder, max, opts.models);
        const left = deadline - Date.now();
        if (leases.length > 0 || left <= 0 || opts.signal.aborted) return leases;
        if (dirty) continue;
        const next = await this.nextWakeMs(opts.models);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, Math.max(0, Math.min(left, next ?? left)));
          function done() {
            clearTimeout(timer);
            opts.signal.removeEventListener("abort", done);
            wake = undefined;
            resolve();
          }
          wake = done;
          opts.signal.addEventListener("abort", done, { once: true });
          if (dirty) done();
        });
      }
    } finally {
      off();
    }
  }

  /** One pass over the models with ready work; grants what their limits allow. */
  async grant(holder: string, max: number, models: string[]): Promise<GrantedLease[]> {
    const ready = await this.db.query<{ model: string }>(sql.MODELS_WITH_READY_WORK, [
      models,
      this.config.defaultLimit,
    ]);
    const granted: GrantedLease[] = [];
    for (const { model } of shuffle(ready.rows)) {
      if (granted.length >= max) break;
      granted.push(...(await this.grantForModel(model, holder, max - granted.length)));
    }
    return granted;
  }

  /**
   * Grants up to `want` leases of one model, under its limit row's lock, in
   * one round trip. Expired leases still count until the reaper frees them
   * (conservative; a dead dispatcher is the rare case).
   */
  async grantForModel(model: string, holder: string, want: number): Promise<GrantedLease[]> {
    const res = await this.db.query<GrantRow>(sql.REQUESTS_GRANT, [
      model,
      want,
      holder,
      this.config.leaseTtlMs,
      this.config.defaultLimit,
    ]);
    return res.rows.map(toLease);
  }

  /** Milliseconds until grants may become possible without a notification. */
  private async nextWakeMs(models: string[]): Promise<number | undefined> {
    const r = await this.db.query<{ ms: string | null }>(sql.NEXT_WAKE, [models]);
    const ms = r.rows[0]?.ms;
    // +5 ms: wake just after the moment, not just before it.
    return ms == null ? undefined : Math.max(0, Math.ceil(Number(ms))) + 5;
  }

  /** Extends current leases; the rest are lost, with the reason. */
  async renew(refs: LeaseRef[]): Promise<{
    renewed: Array<LeaseRef & { expiresAt: Date; ttlMs: number }>;
    lost: Array<LeaseRef & { reason: LossReason }>;
  }> {
    if (refs.length === 0) return { renewed: [], lost: [] };
    const res = await this.db.query<{
      id: string;
      lease_token: string;
      lease_expires_at: Date;
      ttl_ms: string;
    }>(sql.REQUESTS_RENEW, [
      refs.map((r) => r.requestId),
      refs.map((r) => r.token.toString()),
      this.config.leaseTtlMs,
    ]);
    const renewed = res.rows.map((r) => ({
      requestId: r.id,
      token: BigInt(r.lease_token),
      expiresAt: r.lease_expires_at,
      ttlMs: Math.max(0, Math.floor(Number(r.ttl_ms))),
    }));
    const ok = new Set(renewed.map((r) => `${r.requestId}/${r.token}`));
    const missing = refs.filter((r) => !ok.has(`${r.requestId}/${r.token}`));
    if (missing.length === 0) return { renewed, lost: [] };
    const facts = await this.db.query<{
      id: string;
      state: string;
      lease_token: string | null;
      lapsed: boolean | null;
      batch_cancelled: boolean;
      batch_expired: boolean;
    }>(sql.REQUESTS_LEASE_FACTS, [missing.map((r) => r.requestId)]);
    const byId = new Map(facts.rows.map((f) => [f.id, f]));
    const lost = missing.map((ref) => {
      const f = byId.get(ref.requestId);
      let reason: LossReason = "not_current";
      if (f && f.lease_token === ref.token.toString()) {
        if (f.batch_cancelled) reason = "batch_cancelled";
        else if (f.batch_expired) reason = "batch_expired";
        else if (f.state !== "leased" || f.lapsed) reason = "expired";
      } else if (f && f.lease_token !== null && BigInt(f.lease_token) > ref.token) {
        reason = "expired"; // granted again since
      }
      return { ...ref, reason };
    });
    return { renewed, lost };
  }

  /** Applies outcomes; each is recorded only if its lease is still current. */
  async report(outcomes: Outcome[]): Promise<Map<string, Disposition>> {
    const result = new Map<string, Disposition>();
    const key = (r: LeaseRef) => `${r.requestId}/${r.token}`;
    for (const o of outcomes) result.set(key(o.ref), "lost");
    const completions = outcomes.filter((o) => o.kind === "completion");
    const failures = outcomes.filter((o) => o.kind === "failure");
    const releases = outcomes.filter((o) => o.kind === "release");
    if (completions.length > 0) {
      const res = await this.db.query<{ id: string }>(sql.REQUESTS_COMPLETE, [
        completions.map((o) => o.ref.requestId),
        completions.map((o) => o.ref.token.toString()),
        completions.map((o) => o.statusCode),
        completions.map((o) => JSON.stringify(o.headers)),
        completions.map((o) => o.body),
      ]);
      const done = new Set(res.rows.map((r) => r.id));
      for (const o of completions)
        if (done.has(o.ref.requestId)) result.set(key(o.ref), "recorded");
    }
    if (failures.length > 0) await this.recordFailures(failures, result, key);
    if (releases.length > 0) {
      const res = await this.db.query<{ id: string; state: string }>(sql.REQUESTS_RELEASE, [
        releases.map((o) => o.ref.requestId),
        releases.map((o) => o.ref.token.toString()),
      ]);
      const states = new Map(res.rows.map((r) => [r.id, r.state]));
      for (const o of releases) {
        const s = states.get(o.ref.requestId);
        if (s !== undefined) result.set(key(o.ref), s === "pending" ? "requeued" : "recorded");
      }
    }
    return result;
  }

  private async recordFailures(
    failures: Extract<Outcome, { kind: "failure" }>[],
    result: Map<string, Disposition>,
    key: (r: LeaseRef) => string,
  ): Promise<void> {
    const ctx = await this.db.query<{
      id: string;
      model: string;
      attempt: number;
      max_retries: number;
      initial_backoff_ms: number;
      max_backoff_ms: number;
      expires_at: Date;
      now: Date;
    }>(sql.REQUESTS_FAILURE_CONTEXT, [
      failures.map((o) => o.ref.requestId),
      failures.map((o) => o.ref.token.toString()),
    ]);
    const byId = new Map(ctx.rows.map((r) => [r.id, r]));
    const rows: Array<{
      o: (typeof failures)[number];
      model: string;
      next: "pending" | "failed";
      notBefore: Date | null;
      message: string;
    }> = [];
    for (const o of failures) {
      const c = byId.get(o.ref.requestId);
      if (!c) continue; // lease not current: lost
      const decision = decideRetry({
        attempt: c.attempt,
        policy: {
          maxRetries: c.max_retries,
          initialBackoffMs: c.initial_backoff_ms,
          maxBackoffMs: c.max_backoff_ms,
        },
        retriable: o.retriable,
        retryAfterMs: o.retryAfterMs,
        now: c.now,
        deadline: c.expires_at,
      });
      const suffix =
        decision.retry || decision.reason === "not_retriable"
          ? ""
          : decision.reason === "retries_exhausted"
            ? ` (gave up after ${c.attempt} attempts)`
            : " (no time left in the batch's completion window to retry)";
      rows.push({
        o,
        model: c.model,
        next: decision.retry ? "pending" : "failed",
        notBefore: decision.retry ? decision.notBefore : null,
        message: o.message + suffix,
      });
    }
    if (rows.length === 0) return;
    const res = await this.db.query<{ id: string; state: string }>(sql.REQUESTS_FAIL, [
      rows.map((r) => r.o.ref.requestId),
      rows.map((r) => r.o.ref.token.toString()),
      rows.map((r) => r.next),
      rows.map((r) => r.notBefore),
      rows.map((r) => (r.o.statusCode === 0 ? null : r.o.statusCode)),
      rows.map((r) => (r.o.statusCode === 0 ? null : JSON.stringify(r.o.headers))),
      rows.map((r) => (r.o.statusCode === 0 ? null : r.o.bodyExcerpt)),
      rows.map((r) => r.o.code),
      rows.map((r) => r.message),
    ]);
    const states = new Map(res.rows.map((r) => [r.id, r.state]));
    for (const { o } of rows) {
      const s = states.get(o.ref.requestId);
      if (s !== undefined) result.set(key(o.ref), s === "pending" ? "requeued" : "recorded");
    }
    // A 429 holds the model back fleet-wide until its Retry-After has passed.
    const holds = new Map<string, number>();
    for (const { o, model } of rows) {
      if (o.statusCode === 429 && o.retryAfterMs !== undefined && o.retryAfterMs > 0) {
        holds.set(model, Math.max(holds.get(model) ?? 0, o.retryAfterMs));
      }
    }
    for (const [model, ms] of holds) await this.db.query(sql.MODEL_LIMITS_HOLD, [model, ms]);
  }
}
