/**
 * The dispatcher's two conversations about slots (docs/capacity-leases.md):
 *
 * - Sync: one call at a time (so no answer computed before a hand-back can
 *   arrive after it). Sent when a renewal is due (every interval: it renews
 *   every grant and every claim), when WaitForWork names models, when a model
 *   wants claims the reports will not bring, and when slots are to be handed
 *   back. Each model's `keep` is applied locally as the call is sent.
 * - WaitForWork: a long poll that changes nothing, so it is aborted and sent
 *   again whenever what we would tell it changes.
 *
 * Modes: running → stopping (loops end; `release()` sends a last Sync that
 * keeps nothing) → stopped. A failed Sync changes nothing: the fences fire on
 * their own if the control plane stays away.
 */
import { performance } from "node:perf_hooks";
import type { Logger } from "../logger.js";
import type { DispatcherMetrics } from "../metrics/dispatcher-metrics.js";
import type { AttemptRunner } from "./attempt-runner.js";
import { Backoff, sleep, Wakeup } from "./backoff.js";
import type { ClaimSink } from "./claim-intake.js";
import type { LossHandler } from "./fencer.js";
import type { FencePolicy } from "./fencing.js";
import type {
  LeaseClient,
  LeaseRef,
  SlotDemand,
  SyncAnswer,
  WorkInterest,
} from "./lease-client.js";
import type { ModelSlots } from "./model-slots.js";
import type { Shared } from "./parts.js";

/** The parts the sync loop talks to. */
export interface SyncHost extends Pick<Shared, "book" | "table"> {
  /** Where a Sync answer's claims and holds go. */
  readonly claims: ClaimSink;
  /** Grants fenced or lost, claims lost. */
  readonly losses: LossHandler;
  /** The fence margin for a TTL, and the renewal period now. */
  readonly fencing: Pick<FencePolicy, "margin" | "renewIntervalMs" | "observeTtl">;
  /** Every model's buffer may start more now (grants changed). */
  readonly runner: Pick<AttemptRunner, "pumpAll">;
  /** Grant counters and the wait for a new grant. */
  readonly metrics?: DispatcherMetrics;
}

/**
 * While the dispatcher holds a rate share, it Syncs at least this often: a share cut here
 * stops counting against the model's rate at the next Sync (it says what it holds), and a
 * share another dispatcher gave up reaches this one at its next; so shares move between
 * dispatchers within a second or two (docs/pacing.md, "Rate grants").
 */
const RATE_SYNC_MS = 1000;
/**
 * While it runs requests of a model (and holds no rate), at least this often: each Sync
 * carries its pacing view, which `limits list`, `status` and the dashboard show; a renewal
 * period (10 s by default) left them showing the first attempt's view while a slow start
 * grew from 4 to 70.
 */
const VIEW_SYNC_MS = 2000;

export interface SyncOptions {
  models: readonly string[];
  waitMs: number;
  rpcTimeoutMs: number;
}

export class SyncLoop {
  /** When each model without a grant was first asked for (grant wait). */
  readonly #askedSince = new Map<string, number>();
  readonly #wanted = new Wakeup();
  readonly #synced = new Wakeup();
  #syncDue = true;
  #renewAt = 0;
  /** When the last renewing Sync was sent: the next is due a renewal period after it. */
  #renewedAt = 0;
  readonly #stopping = new AbortController();
  #loops: Promise<unknown> = Promise.resolve();
  #waitAbort: AbortController | undefined;
  #waitKey = "";
  #syncing = false;
  #failures = 0;
  /** When the last Sync was sent. */
  #sentAt = 0;

  constructor(
    private readonly host: SyncHost,
    private readonly client: LeaseClient,
    private readonly options: SyncOptions,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.#loops = Promise.all([this.#syncLoop(), this.#waitLoop()]);
  }

  /** Ends both loops; waits for a Sync in flight. */
  async stop(): Promise<void> {
    this.#stopping.abort();
    this.#waitAbort?.abort();
    this.#wanted.notify();
    this.#synced.notify();
    await this.#loops;
  }

  /** Something changed: Sync soon if a model wants it; re-send WaitForWork if our interest changed. */
  poke(): void {
    if (this.#stopping.signal.aborted) return;
    this.#followTtl();
    if (!this.#syncDue && this.host.book.all().some((m) => this.host.book.wantsSync(m))) {
      this.#syncDue = true;
      this.#wanted.notify();
    }
    const key = interestKey(this.host.book.interest(this.options.models));
    if (key !== this.#waitKey) this.#waitAbort?.abort();
  }

  /** A last Sync that keeps nothing: hands every slot back (best effort, at shutdown). */
  async release(): Promise<void> {
    const demands = this.host.book
      .all()
      .filter((m) => m.token !== 0n)
      .map((m) => ({ model: m.model, token: m.token, keep: m.running, want: m.running, room: 0 }));
    if (demands.length === 0) return;
    try {
      await this.client.sync(demands, [], this.options.rpcTimeoutMs);
    } catch (e) {
      this.log.warn({ err: e }, "could not hand slots back; they expire on their own");
    }
  }

  async #syncLoop(): Promise<void> {
    const backoff = new Backoff();
    const signal = this.#stopping.signal;
    while (!signal.aborted) {
      const now = performance.now();
      const due = Math.min(this.#renewAt, this.#paceSyncAt());
      if (!this.#syncDue && now < due) {
        await this.#wanted.wait(signal, due - now);
        continue;
      }
      this.#syncDue = false;
      const ok = await this.#syncOnce(now >= this.#renewAt);
      if (ok) {
        if (this.#failures > 0) this.log.info("the control plane answers again");
        this.#failures = 0;
        backoff.reset();
      } else {
        this.#failures++;
        this.#syncDue = true;
        await sleep(backoff.next(), signal);
      }
      this.#synced.notify();
      this.poke();
    }
  }

  /** One Sync; false when it failed. */
  async #syncOnce(renewing: boolean): Promise<boolean> {
    const { book, table } = this.host;
    const demands: SlotDemand[] = [];
    const asked = new Map<string, number>();
    const now = performance.now();
    for (const m of book.all()) {
      // No grant: ask for one unless told there is nothing for us (starved) or requests of an
      // old grant still end; buffered claims always ask (they cannot run without one).
      if (m.token === 0n && m.queue.length === 0 && (m.starved || m.running > 0)) continue;
      const keep = m.token === 0n ? 0 : book.keep(m);
      // From now until the answer, no more than `keep` run.
      if (m.token !== 0n) m.slots = keep;
      const room = book.room(m);
      m.requested += room;
      if (room > 0) asked.set(m.model, room);
      // A starved model asks for the rate its held claims need; one with a backlog, for all.
      const rate = m.starved ? m.gate.demand?.(m.held) : undefined;
      const pacing = m.token === 0n ? undefined : m.gate.view?.(now);
      if (pacing !== undefined) m.viewSent = true;
      demands.push({
        model: m.model,
        token: m.token,
        keep,
        want: book.want(m),
        room,
        ...rate,
        rpmHeld: m.token === 0n ? undefined : m.rpm,
        tpmHeld: m.token === 0n ? undefined : m.tpm,
        pacing,
      });
      if (m.token === 0n && !this.#askedSince.has(m.model))
        this.#askedSince.set(m.model, performance.now());
    }
    // Lost claims are gone for good; every other one must outlive its report.
    const renew: LeaseRef[] = renewing
      ? table
          .all()
          .filter((e) => e.gaveUp?.reason !== "lost")
          .map((e) => e.ref)
      : [];
    if (demands.length === 0 && renew.length === 0) {
      if (renewing) this.#renewedFrom(performance.now());
      return true;
    }
    const sentAt = performance.now();
    this.#sentAt = sentAt;
    this.#syncing = true;
    let answer: SyncAnswer;
    try {
      answer = await this.client.sync(demands, renew, this.options.rpcTimeoutMs);
    } catch (e) {
      for (const [model, n] of asked) book.get(model).requested -= n;
      if (this.#failures === 0 || this.#failures % 10 === 9) {
        this.log.warn({ err: e, failures: this.#failures + 1 }, "Sync failed; retrying");
      }
      return false;
    } finally {
      this.#syncing = false;
    }
    if (renewing) this.#renewedFrom(sentAt);
    if (this.log.isLevelEnabled("debug")) {
      this.log.debug(
        {
          ms: Math.round(performance.now() - sentAt),
          grants: answer.grants.map((g) => `${g.model}:${g.slots}/${g.target}`),
          claims: answer.claims.length,
          renewed: answer.renewed.length,
        },
        "sync",
      );
    }
    const granted = new Set<string>();
    for (const g of answer.grants) {
      const m = book.get(g.model);
      granted.add(g.model);
      const metrics = this.host.metrics;
      if (metrics !== undefined) {
        const since = this.#askedSince.get(g.model);
        if (m.token === 0n) {
          metrics.grants("granted");
          if (since !== undefined) metrics.grantWait(g.model, (performance.now() - since) / 1000);
        } else metrics.grants("renewed");
      }
      this.#askedSince.delete(g.model);
      this.host.fencing.observeTtl(g.ttlMs);
      m.token = g.token;
      m.slots = g.slots;
      m.target = g.target;
      m.rpm = g.rpm;
      m.tpm = g.tpm;
      this.#arm(m, sentAt + g.ttlMs - this.host.fencing.margin(g.ttlMs));
    }
    for (const l of answer.lostGrants) {
      const m = book.find(l.model);
      if (m && m.token === l.token) this.host.losses.grantGone(m, "lost");
    }
    for (const d of demands) {
      if (granted.has(d.model)) continue;
      const m = book.get(d.model);
      if (d.token === 0n) {
        // Asked for a grant and got none (no such model, or nothing to give): wait to be told.
        m.starved = true;
        this.#askedSince.delete(d.model);
      } else if (!answer.lostGrants.some((l) => l.model === d.model)) {
        // The control plane dropped the grant (it kept nothing and wanted nothing). Claims
        // still held cannot run without one: back to the control plane, as for a lost grant
        // (held here with no grant, a starved model never asked again and renewed them for
        // ever: a batch stalled with them leased).
        if (m.held > 0) this.host.losses.grantGone(m, "lost");
        else m.dropGrant();
      }
    }
    for (const r of answer.renewed) table.extend(r.ref, sentAt, r.ttlMs);
    for (const l of answer.lost) {
      const entry = table.get(l.ref);
      if (entry) this.host.losses.claimLost(entry, l.reason);
    }
    this.host.claims.take(answer, asked, sentAt);
    this.host.runner.pumpAll();
    this.#followTtl();
    return true;
  }

  /**
   * When a Sync is due for the rate shares held, or for the pacing views of the models
   * running (Infinity: neither).
   */
  #paceSyncAt(): number {
    let every = Number.POSITIVE_INFINITY;
    for (const m of this.host.book.all()) {
      if (m.token === 0n) continue;
      if (m.rpm !== undefined || m.tpm !== undefined) return this.#sentAt + RATE_SYNC_MS;
      if (m.running > 0 && m.gate.view !== undefined) every = VIEW_SYNC_MS;
    }
    return this.#sentAt + every;
  }

  /** A renewal went out at `at` (or was not needed): the next is due a period later. */
  #renewedFrom(at: number): void {
    this.#renewedAt = at;
    this.#renewAt = at + this.host.fencing.renewIntervalMs();
  }

  /**
   * The renewal period follows the lease TTL the claims just told (FencePolicy.observeTtl):
   * the first renewal was timed with a TTL assumed before any claim came, and with a
   * shorter real TTL the claims would fence themselves before it.
   */
  #followTtl(): void {
    const due = this.#renewedAt + this.host.fencing.renewIntervalMs();
    if (due < this.#renewAt) {
      this.#renewAt = due;
      this.#wanted.notify();
    }
  }

  #arm(m: ModelSlots, fenceAt: number): void {
    m.fenceAt = fenceAt;
    clearTimeout(m.fenceTimer);
    const check = () => {
      if (m.token === 0n) return;
      const left = m.fenceAt - performance.now();
      if (left > 0) {
        m.fenceTimer = setTimeout(check, left);
        m.fenceTimer.unref();
        return;
      }
      this.host.losses.grantGone(m, "fenced");
    };
    m.fenceTimer = setTimeout(check, Math.max(0, fenceAt - performance.now()));
    m.fenceTimer.unref();
  }

  async #waitLoop(): Promise<void> {
    const backoff = new Backoff();
    const signal = this.#stopping.signal;
    while (!signal.aborted) {
      const interest = this.host.book.interest(this.options.models);
      this.#waitKey = interestKey(interest);
      const abort = new AbortController();
      this.#waitAbort = abort;
      let models: string[];
      try {
        models = await this.client.waitForWork(interest, this.options.waitMs, abort.signal);
      } catch (e) {
        if (abort.signal.aborted) continue; // our own: the interest changed, or we stop
        const wait = backoff.next();
        if (backoff.failures === 1 || backoff.failures % 10 === 0) {
          this.log.warn({ err: e, failures: backoff.failures }, "WaitForWork failed; retrying");
        }
        await sleep(wait, signal);
        continue;
      }
      backoff.reset();
      if (models.length === 0) continue;
      for (const model of models) this.host.book.get(model).starved = false;
      this.#syncDue = true;
      this.#wanted.notify();
      // Until that Sync is answered, asking again would name the same models.
      while ((this.#syncDue || this.#syncing) && !signal.aborted) {
        await this.#synced.wait(signal);
      }
    }
  }
}

function interestKey(i: WorkInterest): string {
  return `${i.hungry.join(",")}|${i.grow.join(",")}|${i.known.join(",")}|${i.more.join(",")}|${i.newModels}`;
}
