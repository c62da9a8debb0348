/**
 * Capacity leases (docs/capacity-leases.md): slot grants, which count
 * against a model's fleet-wide limit, and request claims, which do not. The
 * database is the judge: a grant changes only under its model's limit-row
 * lock and only for the current token (fusillade_slots); a claim changes
 * only by a guarded UPDATE on (id, token, state = 'leased'). A zero-row
 * answer is a lost race, answered as such, changing nothing.
 *
 * Modes of a model, for one dispatcher's Sync: held (a 429 read the meter
 * empty, until its reset) → the grant is renewed and may be cut, never
 * grown, and no claims; otherwise the grant goes to min(keep, slots) and then
 * toward the holder's fair share, and claims fill the room the dispatcher
 * names, split among the model's running batches by priority class, tenant
 * weight and batch (docs/fair-share.md, ./fair-share.ts). A model with a
 * rate also gives the holder a share of it (fusillade_rates; docs/pacing.md).
 *
 * src/leases/ owns slot grants, claims, renewals, reports and the reaper,
 * with their named SQL (./sql.ts). It may import src/storage, src/auth,
 * src/domain and the logger.
 */
import type { ModelHold, SlotDemand, SlotGrant } from "../domain/capacity.js";

export type { ModelHold, SlotDemand, SlotGrant };

import { randomInt } from "node:crypto";
import type { Keyring } from "../auth/secrets.js";
import type { AttemptFailure } from "../domain/outcome.js";
import { meterEmptyForMs, parseRateLimitHeaders } from "../domain/rate-limit-headers.js";
import { decideRetry, isBackpressure, MAX_RETRY_AFTER_MS } from "../domain/retry-policy.js";
import { loadKeys } from "../storage/api-keys.js";
import type { Db, Queryable } from "../storage/db.js";
import { LIMITS_CHANNEL, type Notifications, WORK_CHANNEL } from "../storage/notifications.js";
import { allocateClaims, type ShareEntry, type SharePolicy } from "./fair-share.js";
import * as sql from "./sql.js";

/** A connection or the pool: statements run in a transaction or on their own. */

export interface LeaseServiceConfig {
  defaultLimit: number;
  /** TTL of slot grants and of claims. */
  leaseTtlMs: number;
  maxAcquireWaitMs: number;
  /** Most request-body bytes of the claims in one answer (a claim is always possible). */
  maxClaimBytes: number;
  /** How claims of a model are split among batches (docs/fair-share.md). @default "fair" */
  sharePolicy?: SharePolicy;
}

/** A claimed request, as the dispatcher needs it. */
export interface GrantedClaim {
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
  ttlMs: number;
}

export interface LeaseRef {
  requestId: string;
  token: bigint;
}

export interface SyncResult {
  grants: SlotGrant[];
  lostGrants: Array<{ model: string; token: bigint }>;
  claims: GrantedClaim[];
  renewed: Array<LeaseRef & { ttlMs: number }>;
  lost: Array<LeaseRef & { reason: LossReason }>;
  holds: ModelHold[];
}

/** What a dispatcher could take, for WaitForWork. */
export interface WorkInterest {
  models: string[];
  hungry: string[];
  grow: string[];
  known: string[];
  newModels: boolean;
  /** Named only after a notification about the model during the wait. */
  more: string[];
}

export type LossReason = "expired" | "batch_cancelled" | "batch_expired" | "not_current";

export type Outcome =
  | {
      ref: LeaseRef;
      kind: "completion";
      statusCode: number;
      headers: Record<string, string>;
      body: Uint8Array;
    }
  | ({ ref: LeaseRef } & AttemptFailure)
  | { ref: LeaseRef; kind: "release"; reason: string; unsent: boolean };

export type Disposition = "recorded" | "requeued" | "lost";

/**
 * SQLSTATEs of text Postgres cannot hold (a NUL byte; an untranslatable
 * character). Bodies are bytes (bytea) and never raise them; a header value
 * (jsonb) still can.
 */
const UNSTORABLE_TEXT_SQLSTATES = new Set(["22021", "22P05"]);

/** A Buffer over the same bytes (node-postgres sends Buffers, not Uint8Arrays, as bytea). */
function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

function isUnstorableText(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" && UNSTORABLE_TEXT_SQLSTATES.has(code);
}

/** `s` with the characters Postgres text cannot hold (NUL) replaced by U+FFFD. */
function storableText(s: string): string {
  return s.includes("\u0000") ? s.replaceAll("\u0000", "\uFFFD") : s;
}

function storableHeaders(h: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(h).map(([k, v]) => [storableText(k), storableText(v)]));
}

/** Decrypted API keys kept per control plane (one per file, usually). */
const KEY_CACHE_MAX = 10_000;

/** Upper bound on claims handed out by one call (the rest come with the next). */
export const MAX_CLAIMS_PER_CALL = 2000;

interface ClaimRow {
  id: string;
  batch_id: string;
  custom_id: string | null;
  model: string;
  attempt: number;
  method: string;
  endpoint: string;
  path: string;
  body: string;
  api_key_id: string | null;
  lease_token: string;
  len: number;
}

interface CandidateRow {
  model: string;
  batch_id: string;
  tenant: string;
  priority: number;
  weight: number;
  created_ms: string;
  claims: number;
  ready: boolean;
}

/** How long a model's lone ready batch is trusted without reading the candidates again. */
const LONE_TTL_MS = 100;
/** A model's lone ready batch, as an allocation entry (only its id matters). */
const LONE_ENTRY: ShareEntry = {
  batchId: "",
  tenant: "",
  priority: 0,
  weight: 1,
  claims: 0,
  ready: true,
  createdAt: 0,
};

/** Rounds of one claim call: a batch that had fewer ready rows than it was given leaves its rest to the others. */
const CLAIM_ROUNDS = 3;

/**
 * A header value for `custom_id`: as it is when it is visible ASCII, else
 * percent-encoded (a header cannot carry other characters; `请求-1` would make
 * the request unsendable).
 */
export function customIdHeader(customId: string): string {
  return /^[\x20-\x7e]*$/.test(customId) ? customId : encodeURIComponent(customId);
}

function toClaim(r: ClaimRow, apiKey: string | undefined, ttlMs: number): GrantedClaim {
  const headers: Array<[string, string]> = [];
  if (r.body !== "") headers.push(["content-type", "application/json"]);
  if (apiKey) headers.push(["authorization", `Bearer ${apiKey}`]);
  headers.push(["x-fusillade-request-id", r.id]);
  if (r.custom_id !== null) headers.push(["x-fusillade-custom-id", customIdHeader(r.custom_id)]);
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
    ttlMs,
  };
}

function shuffle<T>(xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

/** What the lease service counts (the control plane's metrics); every hook optional. */
export interface LeaseMetrics {
  slotGrant?(event: "granted" | "renewed" | "lost", n?: number): void;
  claimsGranted?(n: number): void;
  reported?(kind: string, disposition: string): void;
  reportBatch?(size: number): void;
}

export class LeaseService {
  constructor(
    private readonly db: Db,
    private readonly notifications: Notifications,
    private readonly config: LeaseServiceConfig,
    private readonly keyring: Keyring,
    private readonly metrics: LeaseMetrics = {},
  ) {
    // New work for a model (a batch created, a request back to pending) may
    // add a candidate batch: forget what was known of it. "*": a reconnect.
    notifications.on(WORK_CHANNEL, (model) => {
      if (model === "*") this.#lone.clear();
      else this.#lone.delete(model);
      this.#workSeen++;
    });
  }

  /**
   * Models last seen with exactly one batch ready (docs/fair-share.md): while
   * that holds, all their claims go to it and the candidates need not be read.
   * Dropped on a work notification for the model, when that batch falls
   * short, and after LONE_TTL_MS (a retry's backoff ends without a notification).
   */
  readonly #lone = new Map<string, { batchId: string; until: number }>();
  /** Work notifications seen: a candidates read that overlapped one is not remembered. */
  #workSeen = 0;

  /** Decrypted API keys by api_keys id: claims of one file share one. */
  readonly #keys = new Map<string, string>();

  /**
   * One dispatcher's Sync: grants per model (token check, cut to keep, grow
   * toward the fair share), then claims for the room named, renewals of the
   * claims named, and the holds of its models. Never waits.
   */
  async sync(holder: string, demands: SlotDemand[], renew: LeaseRef[]): Promise<SyncResult> {
    const grants: SlotGrant[] = [];
    const lostGrants: SyncResult["lostGrants"] = [];
    const rooms = new Map<string, number>();
    // Models in a random order: no model's row is always locked first.
    for (const d of shuffle([...demands])) {
      const res = await this.db.query<{
        token: string;
        slots: number;
        target: number;
        lost: boolean;
      }>(sql.SLOTS_SYNC, [
        d.model,
        holder,
        d.token.toString(),
        Math.max(0, d.keep),
        Math.max(0, d.want),
        this.config.leaseTtlMs,
        this.config.defaultLimit,
      ]);
      const row = res.rows[0];
      if (!row) continue; // asked for nothing, holds nothing
      if (row.lost) {
        lostGrants.push({ model: d.model, token: d.token });
        continue;
      }
      if (d.pacing !== undefined) {
        await this.db.query(sql.PACING_VIEW_SET, [d.model, holder, JSON.stringify(d.pacing)]);
      }
      const rate = await this.db.query<{ rpm: number | null; tpm: number | null }>(sql.RATES_SYNC, [
        d.model,
        holder,
        Math.max(0, d.want),
        Math.max(0, d.rateWant ?? 0),
        (d.tokenWant ?? 0n) > 0n ? d.tokenWant!.toString() : "0",
        this.config.leaseTtlMs,
        d.rpmHeld ?? null,
        d.tpmHeld ?? null,
      ]);
      grants.push({
        model: d.model,
        token: BigInt(row.token),
        slots: row.slots,
        target: row.target,
        ttlMs: this.config.leaseTtlMs,
        rpm: rate.rows[0]?.rpm ?? undefined,
        tpm: rate.rows[0]?.tpm ?? undefined,
      });
      if (d.room > 0 && row.slots > 0) rooms.set(d.model, d.room);
    }
    const claims = await this.claim(holder, rooms);
    const { renewed, lost } = await this.renew(renew);
    const holds = await this.holds(demands.map((d) => d.model));
    this.#countSync(demands, grants, lostGrants.length, claims.length);
    return { grants, lostGrants, claims, renewed, lost, holds };
  }

  #countSync(demands: SlotDemand[], grants: SlotGrant[], lost: number, claims: number): void {
    const asked = new Map(demands.map((d) => [d.model, d.token]));
    const fresh = grants.filter((g) => asked.get(g.model) === 0n).length;
    this.metrics.slotGrant?.("granted", fresh);
    this.metrics.slotGrant?.("renewed", grants.length - fresh);
    this.metrics.slotGrant?.("lost", lost);
    this.metrics.claimsGranted?.(claims);
  }

  /** Claims up to `rooms.get(model)` ready requests of each model for `holder`. */
  async claim(
    holder: string,
    rooms: Map<string, number>,
    q: Queryable = this.db,
  ): Promise<GrantedClaim[]> {
    let budget = MAX_CLAIMS_PER_CALL;
    const models: string[] = [];
    const counts: number[] = [];
    for (const [model, room] of rooms) {
      const n = Math.min(room, budget);
      if (n <= 0) continue;
      models.push(model);
      counts.push(n);
      budget -= n;
    }
    if (models.length === 0) return [];
    const rows = await this.#claimRows(holder, models, counts, q);
    const keys = await this.#apiKeys(rows, q);
    const claims: GrantedClaim[] = [];
    const unreadable: Outcome[] = [];
    for (const r of rows) {
      const key = r.api_key_id === null ? undefined : keys.get(r.api_key_id);
      if (typeof key === "object") {
        // Never sent without its credential: the request fails, saying why.
        unreadable.push({
          ref: { requestId: r.id, token: BigInt(r.lease_token) },
          kind: "failure",
          statusCode: 0,
          code: "secret_unavailable",
          message: key.error,
          retriable: false,
          bodyExcerpt: new Uint8Array(),
          headers: {},
        });
      } else claims.push(toClaim(r, key, this.config.leaseTtlMs));
    }
    if (unreadable.length > 0) await this.report(unreadable, q);
    return claims;
  }

  /**
   * The claim itself (docs/fair-share.md): reads each model's candidate
   * batches with their current claims, splits the room among them, and takes
   * each batch's share of its oldest ready requests. A batch that had fewer
   * than its share leaves the rest to the others in the next round.
   */
  async #claimRows(
    holder: string,
    models: string[],
    counts: number[],
    q: Queryable,
  ): Promise<ClaimRow[]> {
    const policy = this.config.sharePolicy ?? "fair";
    const entries = new Map<string, ShareEntry[]>(models.map((m) => [m, []]));
    const now = Date.now();
    const toRead: string[] = [];
    for (const m of models) {
      const lone = this.#lone.get(m);
      if (lone !== undefined && lone.until > now) {
        entries.get(m)!.push({ ...LONE_ENTRY, batchId: lone.batchId });
      } else toRead.push(m);
    }
    if (toRead.length > 0) {
      const seen = this.#workSeen;
      const cand = await q.query<CandidateRow>(sql.CLAIM_CANDIDATES, [toRead]);
      for (const c of cand.rows) {
        entries.get(c.model)?.push({
          batchId: c.batch_id,
          tenant: c.tenant,
          priority: c.priority,
          weight: c.weight,
          claims: c.claims,
          ready: c.ready,
          createdAt: Number(c.created_ms),
        });
      }
      for (const m of toRead) {
        const ready = entries.get(m)!.filter((e) => e.ready);
        if (ready.length === 1 && seen === this.#workSeen) {
          this.#lone.set(m, { batchId: ready[0]!.batchId, until: now + LONE_TTL_MS });
        } else this.#lone.delete(m);
      }
    }
    const room = new Map(models.map((m, i) => [m, counts[i]!]));
    const perModelBytes = Math.ceil(this.config.maxClaimBytes / models.length);
    const bytes = new Map(models.map((m) => [m, perModelBytes]));
    /** Per model, batches that fell short of their share: nothing more from them this call. */
    const spent = new Map(models.map((m) => [m, new Map<string, number>()]));
    const rows: ClaimRow[] = [];
    for (let round = 0; round < CLAIM_ROUNDS; round++) {
      const asked: Array<{ model: string; batchId: string; n: number; bytes: number }> = [];
      for (const [model, list] of entries) {
        const left = room.get(model)!;
        if (left <= 0 || bytes.get(model)! <= 0) continue;
        for (const [batchId, n] of allocateClaims(left, list, policy, spent.get(model))) {
          asked.push({ model, batchId, n, bytes: bytes.get(model)! });
        }
      }
      if (asked.length === 0) break;
      const res = await q.query<ClaimRow>(sql.REQUESTS_CLAIM, [
        asked.map((a) => a.model),
        asked.map((a) => a.batchId),
        asked.map((a) => a.n),
        holder,
        this.config.leaseTtlMs,
        asked.map((a) => a.bytes),
      ]);
      rows.push(...res.rows);
      const got = new Map<string, number>();
      for (const r of res.rows) {
        const k = `${r.model}\n${r.batch_id}`;
        got.set(k, (got.get(k) ?? 0) + 1);
        room.set(r.model, room.get(r.model)! - 1);
        bytes.set(r.model, bytes.get(r.model)! - Number(r.len));
      }
      let short = false;
      for (const a of asked) {
        const g = got.get(`${a.model}\n${a.batchId}`) ?? 0;
        const e = entries.get(a.model)!.find((x) => x.batchId === a.batchId)!;
        e.claims += g;
        if (g < a.n) {
          // Fewer ready rows than its share (or the byte cap ended the model's claims).
          spent.get(a.model)!.set(a.batchId, 0);
          if (this.#lone.get(a.model)?.batchId === a.batchId) this.#lone.delete(a.model);
          short = true;
        }
      }
      if (!short) break;
    }
    return rows;
  }

  /** The API keys of `rows`, decrypted (cached); an `{error}` for one this process cannot read. */
  async #apiKeys(rows: ClaimRow[], q: Queryable): Promise<Map<string, string | { error: string }>> {
    const out = new Map<string, string | { error: string }>();
    const missing: string[] = [];
    for (const r of rows) {
      if (r.api_key_id === null || out.has(r.api_key_id)) continue;
      const hit = this.#keys.get(r.api_key_id);
      if (hit !== undefined) out.set(r.api_key_id, hit);
      else {
        out.set(r.api_key_id, "");
        missing.push(r.api_key_id);
      }
    }
    if (missing.length === 0) return out;
    const { keys, failed } = await loadKeys(q, this.keyring, missing);
    if (this.#keys.size + keys.size > KEY_CACHE_MAX) this.#keys.clear();
    for (const [id, k] of keys) {
      this.#keys.set(id, k);
      out.set(id, k);
    }
    for (const [id, error] of failed) out.set(id, { error });
    return out;
  }

  /** Models among `models` on a 429 hold now. */
  async holds(models: string[], q: Queryable = this.db): Promise<ModelHold[]> {
    if (models.length === 0) return [];
    const res = await q.query<{ model: string; ms: string }>(sql.MODEL_HOLDS, [models]);
    return res.rows.map((r) => ({ model: r.model, remainingMs: Math.ceil(Number(r.ms)) }));
  }

  /**
   * The models with work a dispatcher with `interest` could take; waits up to `waitMs`
   * for some. Wakes on NOTIFY (work became pending, slots were handed back,
   * a limit changed) and at the next scheduled moment (a retry's
   * not_before, a hold's end, a grant's expiry), never on a polling timer.
   */
  async waitForWork(
    interest: WorkInterest,
    waitMs: number,
    signal: AbortSignal,
  ): Promise<string[]> {
    const deadline = Date.now() + Math.min(Math.max(0, waitMs), this.config.maxAcquireWaitMs);
    const wanted = new Set(interest.models);
    const more = new Set(interest.more);
    // `more` models notified since the call began: they may grow now.
    const grow = new Set(interest.grow);
    let dirty = false;
    let wake: (() => void) | undefined;
    // Subscribe before looking, so a notification between look and wait is not lost.
    const off = this.notifications.on(WORK_CHANNEL, (model) => {
      if (model === "*" || wanted.size === 0 || wanted.has(model)) {
        if (model === "*") for (const m of more) grow.add(m);
        else if (more.has(model)) grow.add(model);
        dirty = true;
        wake?.();
      }
    });
    // Models it holds whose limit changed: it must re-read its share (a
    // lowered limit takes slots back only through the holders' Syncs).
    const known = new Set(interest.known);
    const changed = new Set<string>();
    const offLimits = this.notifications.on(LIMITS_CHANNEL, (model) => {
      const hit = model === "*" ? [...known] : known.has(model) ? [model] : [];
      for (const m of hit) changed.add(m);
      if (hit.length > 0) wake?.();
    });
    try {
      for (;;) {
        if (signal.aborted) return [];
        dirty = false;
        const { ready, wakeMs } = await this.workCheck({ ...interest, grow: [...grow] });
        const left = deadline - Date.now();
        if (changed.size > 0) return [...new Set([...changed, ...ready])];
        if (ready.length > 0 || left <= 0 || signal.aborted) return ready;
        if (dirty) continue;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, Math.max(0, Math.min(left, wakeMs ?? left)));
          function done() {
            clearTimeout(timer);
            signal.removeEventListener("abort", done);
            wake = undefined;
            resolve();
          }
          wake = done;
          signal.addEventListener("abort", done, { once: true });
          if (dirty || changed.size > 0) done();
        });
      }
    } finally {
      off();
      offLimits();
    }
  }

  /** One look: the models with work for the holder now, and ms to the next scheduled moment. */
  async workCheck(i: WorkInterest): Promise<{ ready: string[]; wakeMs: number | undefined }> {
    const res = await this.db.query<{ model: string; go: boolean; wake_ms: string | null }>(
      sql.WORK_CHECK,
      [i.models, i.hungry, i.grow, i.known, i.newModels, this.config.defaultLimit],
    );
    let wakeMs: number | undefined;
    for (const r of res.rows) {
      if (r.wake_ms === null) continue;
      // +5 ms: wake just after the moment, not just before it.
      const ms = Math.max(0, Math.ceil(Number(r.wake_ms))) + 5;
      wakeMs = wakeMs === undefined ? ms : Math.min(wakeMs, ms);
    }
    return { ready: res.rows.filter((r) => r.go).map((r) => r.model), wakeMs };
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

  /**
   * Records outcomes, then claims for `rooms` and reads the holds of their
   * models. Each statement commits on its own: in one transaction, two
   * reports whose statements touch the same batches in different orders
   * (completions of batch 2 then failures of batch 1, and the reverse) would
   * hold one batch row while waiting for the other, a deadlock.
   */
  async reportAndClaim(
    outcomes: Outcome[],
    holder: string,
    rooms: Map<string, number>,
  ): Promise<{
    dispositions: Map<string, Disposition>;
    claims: GrantedClaim[];
    holds: ModelHold[];
  }> {
    const dispositions = await this.report(outcomes);
    this.#countReport(outcomes, dispositions);
    if (rooms.size === 0 || holder === "") return { dispositions, claims: [], holds: [] };
    const claims = await this.claim(holder, rooms);
    this.metrics.claimsGranted?.(claims.length);
    const holds = await this.holds([...rooms.keys()]);
    return { dispositions, claims, holds };
  }

  #countReport(outcomes: Outcome[], dispositions: Map<string, Disposition>): void {
    if (outcomes.length === 0) return;
    this.metrics.reportBatch?.(outcomes.length);
    for (const o of outcomes) {
      const d = dispositions.get(`${o.ref.requestId}/${o.ref.token}`) ?? "lost";
      this.metrics.reported?.(o.kind, d);
    }
  }

  /** Applies outcomes; each is recorded only if its claim is still current. */
  async report(outcomes: Outcome[], q: Queryable = this.db): Promise<Map<string, Disposition>> {
    const result = new Map<string, Disposition>();
    const key = (r: LeaseRef) => `${r.requestId}/${r.token}`;
    for (const o of outcomes) result.set(key(o.ref), "lost");
    const completions = outcomes.filter((o) => o.kind === "completion");
    // Text Postgres cannot store in a failure's message or headers is replaced, not fatal.
    const failures = outcomes
      .filter((o) => o.kind === "failure")
      .map((o) => ({
        ...o,
        message: storableText(o.message),
        headers: storableHeaders(o.headers),
      }));
    const releases = outcomes.filter((o) => o.kind === "release");
    const unstorable = await this.recordCompletions(completions, result, key, q);
    failures.push(...unstorable);
    if (failures.length > 0) await this.recordFailures(failures, result, key, q);
    if (releases.length > 0) {
      const res = await q.query<{ id: string; state: string }>(sql.REQUESTS_RELEASE, [
        releases.map((o) => o.ref.requestId),
        releases.map((o) => o.ref.token.toString()),
        releases.map((o) => o.unsent),
      ]);
      const states = new Map(res.rows.map((r) => [r.id, r.state]));
      for (const o of releases) {
        const s = states.get(o.ref.requestId);
        if (s !== undefined) result.set(key(o.ref), s === "pending" ? "requeued" : "recorded");
      }
    }
    return result;
  }

  /**
   * Records completions in one statement. When Postgres refuses the text of
   * one (a NUL escape in a header value: SQLSTATE 22P05), each is tried alone, so
   * one hostile response never drops the others; the ones that still fail are
   * returned as non-retriable failures to record instead (the same response
   * would come back the same).
   */
  private async recordCompletions(
    completions: Extract<Outcome, { kind: "completion" }>[],
    result: Map<string, Disposition>,
    key: (r: LeaseRef) => string,
    q: Queryable,
  ): Promise<Extract<Outcome, { kind: "failure" }>[]> {
    const complete = (batch: typeof completions) => {
      let start = 1;
      const starts = batch.map((o) => {
        const at = start;
        start += o.body.byteLength;
        return at;
      });
      return q.query<{ id: string }>(sql.REQUESTS_COMPLETE, [
        batch.map((o) => o.ref.requestId),
        batch.map((o) => o.ref.token.toString()),
        batch.map((o) => o.statusCode),
        `[${batch.map((o) => JSON.stringify(o.headers)).join(",")}]`,
        Buffer.concat(batch.map((o) => o.body)),
        starts,
        batch.map((o) => o.body.byteLength),
      ]);
    };
    const mark = (rows: Array<{ id: string }>, batch: typeof completions) => {
      const done = new Set(rows.map((r) => r.id));
      for (const o of batch) if (done.has(o.ref.requestId)) result.set(key(o.ref), "recorded");
    };
    if (completions.length === 0) return [];
    try {
      mark((await complete(completions)).rows, completions);
      return [];
    } catch (e) {
      if (!isUnstorableText(e)) throw e;
    }
    const unstorable: Extract<Outcome, { kind: "failure" }>[] = [];
    for (const o of completions) {
      try {
        mark((await complete([o])).rows, [o]);
      } catch (e) {
        if (!isUnstorableText(e)) throw e;
        unstorable.push({
          ref: o.ref,
          kind: "failure",
          statusCode: o.statusCode,
          code: "response_unstorable",
          message: `the upstream answered ${o.statusCode}, but its headers hold text that cannot be stored (${(e as Error).message})`,
          retriable: false,
          bodyExcerpt: o.body.subarray(0, 4096),
          headers: storableHeaders(o.headers),
        });
      }
    }
    return unstorable;
  }

  private async recordFailures(
    failures: Extract<Outcome, { kind: "failure" }>[],
    result: Map<string, Disposition>,
    key: (r: LeaseRef) => string,
    q: Queryable,
  ): Promise<void> {
    const ctx = await q.query<{
      id: string;
      model: string;
      attempt: number;
      throttled_attempts: number;
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
      throttled: boolean;
    }> = [];
    for (const o of failures) {
      const c = byId.get(o.ref.requestId);
      if (!c) continue; // lease not current: lost
      // "Slow down" (429, 503 with Retry-After) is backpressure, not failure
      // (DESIGN §5): it spends no retry; only the window bounds it.
      const throttled = o.retriable && isBackpressure(o.statusCode, o.retryAfterMs);
      const decision = decideRetry({
        attempt: c.attempt,
        throttledAttempts: c.throttled_attempts,
        backpressure: throttled,
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
            ? ` (gave up after ${c.attempt} ${c.attempt === 1 ? "attempt" : "attempts"})`
            : " (no time left in the batch's completion window to retry)";
      // Throttled past the window's end: it waits for the end, and ends with
      // the batch as expired, this 429 in its message (REQUESTS_END_WITH_BATCH).
      const waits = decision.retry || throttled;
      rows.push({
        o,
        model: c.model,
        next: waits ? "pending" : "failed",
        notBefore: decision.retry ? decision.notBefore : throttled ? c.expires_at : null,
        message: waits ? o.message : o.message + suffix,
        throttled,
      });
    }
    if (rows.length === 0) return;
    const res = await q.query<{ id: string; state: string }>(sql.REQUESTS_FAIL, [
      rows.map((r) => r.o.ref.requestId),
      rows.map((r) => r.o.ref.token.toString()),
      rows.map((r) => r.next),
      rows.map((r) => r.notBefore),
      rows.map((r) => (r.o.statusCode === 0 ? null : r.o.statusCode)),
      rows.map((r) => (r.o.statusCode === 0 ? null : JSON.stringify(r.o.headers))),
      rows.map((r) => (r.o.statusCode === 0 ? null : asBuffer(r.o.bodyExcerpt))),
      rows.map((r) => r.o.code),
      rows.map((r) => r.message),
      rows.map((r) => r.throttled),
    ]);
    const states = new Map(res.rows.map((r) => [r.id, r.state]));
    for (const { o } of rows) {
      const s = states.get(o.ref.requestId);
      if (s !== undefined) result.set(key(o.ref), s === "pending" ? "requeued" : "recorded");
    }
    // A 429 holds the model back fleet-wide only when its headers read the
    // meter empty, until the meter's reset (capped like a Retry-After). A
    // 429 without that evidence (a random one, an overloaded upstream) holds
    // only its own request (not_before above): one 429 must not stop a whole
    // model (DESIGN §3.7); the dispatchers' pacers slow down on their own.
    const holds = new Map<string, number>();
    for (const { o, model } of rows) {
      if (o.statusCode !== 429) continue;
      const state = parseRateLimitHeaders(o.headers, Date.now());
      const ms = meterEmptyForMs({ ...state, retryAfterMs: o.retryAfterMs }, 0);
      if (ms !== undefined && ms > 0) {
        holds.set(model, Math.max(holds.get(model) ?? 0, Math.min(ms, MAX_RETRY_AFTER_MS)));
      }
    }
    for (const [model, ms] of holds) await q.query(sql.MODEL_LIMITS_HOLD, [model, ms]);
  }
}
