/**
 * What a dispatcher holds of each model: its slot grant (token, slots,
 * target, fence), the buffer of claims waiting for a slot, the requests
 * running, and a 429 hold. Pure book-keeping and the arithmetic of demand
 * (docs/capacity-leases.md); the loops that act on it are in ./dispatcher.ts
 * and ./sync-loop.ts.
 *
 * Modes of a model:
 * - unknown/lost: no grant (token 0): nothing starts; a Sync asks for one;
 * - granted: up to min(slots, target) requests run; claims buffer up to that
 *   plus the prefetch; above the target, nothing starts and slots go back
 *   (through `keep`) as requests finish;
 * - fenced: the grant was not renewed in time: every running request was
 *   aborted and the model is back to unknown;
 * - held: a 429 hold: nothing starts until it ends (the grant is kept).
 * Each model also carries its gate (./model-gate.ts): the home of its pacing
 * state, asked before each attempt starts.
 * Times are `performance.now()` milliseconds.
 */
import { performance } from "node:perf_hooks";
import type { PacingView } from "../domain/capacity.js";
import type { WorkInterest } from "./lease-client.js";
import type { HeldLease } from "./lease-table.js";
import { admitAll, type GateFactory, type GrantView, type ModelGate } from "./model-gate.js";

/** One model's grant, buffer and running count. */
export class ModelSlots implements GrantView {
  /** The grant's token; 0n: no grant. */
  token = 0n;
  slots = 0;
  target = 0;
  /** The grant is fenced (every running request aborted) at this moment unless renewed. */
  fenceAt = 0;
  fenceTimer: NodeJS.Timeout | undefined;
  /** Claims waiting for a slot, oldest first. */
  readonly queue: HeldLease[] = [];
  running = 0;
  /** No request starts before this moment (a 429's Retry-After). */
  heldUntil = 0;
  /** Claims asked for (by a Sync or a report) and not answered yet. */
  requested = 0;
  /** The last claim answer gave fewer than asked: the model has no backlog for us now. */
  starved = false;
  /** A Sync has carried the gate's pacing view (the first goes out soon after the first attempt). */
  viewSent = false;
  /** This dispatcher's share of the model's rates, from its grant (docs/pacing.md). */
  rpm: number | undefined;
  tpm: number | undefined;
  /** Asked before each attempt of the model starts; told how it ended. */
  readonly gate: ModelGate;

  constructor(
    readonly model: string,
    gateFor: GateFactory = admitAll,
  ) {
    this.gate = gateFor(model, this);
  }

  /** The slots this dispatcher may use of its grant: within the fair share target. */
  get granted(): number {
    return this.token === 0n ? 0 : Math.min(this.slots, this.target);
  }

  /** Requests of the model that may run at once now: the granted slots, within what its gate can use. */
  get usable(): number {
    const granted = this.granted;
    if (granted === 0 || this.gate.useful === undefined) return granted;
    return Math.min(granted, this.gate.useful(performance.now()));
  }

  /** Claims held: running and buffered. */
  get held(): number {
    return this.running + this.queue.length;
  }

  /** Whether the next buffered claim may start now (the gate not asked yet). */
  canStart(now = performance.now()): boolean {
    return this.running < this.usable && now >= this.heldUntil && now < this.fenceAt;
  }

  /** The grant is gone (fenced, lost, or dropped by the control plane): nothing may run. */
  dropGrant(): void {
    this.token = 0n;
    this.slots = 0;
    this.target = 0;
    this.rpm = undefined;
    this.tpm = undefined;
    // A new grant is a new row: its first Sync carries the view again.
    this.viewSent = false;
    clearTimeout(this.fenceTimer);
  }

  /** Takes `entry` out of the buffer (it will never start here); false when it was not in it. */
  unqueue(entry: HeldLease): boolean {
    const i = this.queue.indexOf(entry);
    if (i < 0) return false;
    this.queue.splice(i, 1);
    return true;
  }
}

/** One model's gauges. */
export interface ModelGauges {
  model: string;
  running: number;
  slots: number;
  buffered: number;
  held: boolean;
  rpm: number | undefined;
  tpm: number | undefined;
  pacing: PacingView | undefined;
}

/** Every model the dispatcher holds or has heard of; see the file header. */
export class SlotBook {
  readonly #models = new Map<string, ModelSlots>();

  constructor(
    /** Most requests running at once across models (the memory bound). */
    private readonly capacity: number,
    /** Buffered claims beyond the slots, as a share of them (at least one). */
    private readonly prefetch: number,
    /** Each model's gate, made when the model is first met. */
    private readonly gateFor: GateFactory = admitAll,
  ) {}

  get(model: string): ModelSlots {
    let m = this.#models.get(model);
    if (!m) {
      m = new ModelSlots(model, this.gateFor);
      this.#models.set(model, m);
    }
    return m;
  }

  find(model: string): ModelSlots | undefined {
    return this.#models.get(model);
  }

  all(): ModelSlots[] {
    return [...this.#models.values()];
  }

  /** Slots held across models. */
  get slotsHeld(): number {
    let n = 0;
    for (const m of this.#models.values()) n += m.token === 0n ? 0 : m.slots;
    return n;
  }

  /** Slots held now, per granted model (the stats' view). */
  grantedSlots(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const m of this.#models.values()) if (m.token !== 0n) out[m.model] = m.slots;
    return out;
  }

  /** Each model's gauges now (the metrics' view). */
  *gauges(): Generator<ModelGauges> {
    const now = performance.now();
    for (const m of this.#models.values()) {
      yield {
        model: m.model,
        running: m.running,
        slots: m.token === 0n ? 0 : m.slots,
        buffered: m.queue.length,
        held: now < m.heldUntil,
        rpm: m.token === 0n ? undefined : m.rpm,
        tpm: m.token === 0n ? undefined : m.tpm,
        pacing: m.gate.view?.(now),
      };
    }
  }

  /** Claims `m` holds when its buffer is full: its usable slots plus the prefetch. */
  bufferSize(m: ModelSlots): number {
    const usable = m.usable;
    return usable === 0 ? 0 : usable + Math.max(1, Math.ceil(usable * this.prefetch));
  }

  /** Claims wanted for `m`'s buffer now (0 without usable slots). */
  room(m: ModelSlots): number {
    return Math.max(0, this.bufferSize(m) - m.held - m.requested);
  }

  /**
   * Slots `m` could use: with a backlog, what the capacity leaves beside the
   * other models' slots; without, what it runs and buffers.
   */
  want(m: ModelSlots): number {
    if (m.starved) return m.held;
    const others = this.slotsHeld - (m.token === 0n ? 0 : m.slots);
    const useful = m.gate.useful?.(performance.now()) ?? Number.POSITIVE_INFINITY;
    return Math.max(m.held, Math.min(useful, this.capacity - others));
  }

  /** Slots to keep: never below what runs; otherwise the usable slots, down to the demand. */
  keep(m: ModelSlots): number {
    return Math.max(m.running, Math.min(m.usable, this.want(m)));
  }

  /**
   * Whether a Sync should go now for `m`: claims wanted and likely there, with
   * nothing asked for yet, and either nothing running (no report will ask) or
   * the buffer at least half empty (the reports' refills lag: a ramp-up, or
   * slots just grown); or slots to hand back. A Sync per finished request is
   * what the first rule alone would give; reports refill the steady state.
   */
  wantsSync(m: ModelSlots): boolean {
    if (m.token === 0n) return !m.starved && m.running === 0;
    // The first pacing view: status and the dashboard say why a model runs as it does from
    // its first attempt, not from the next renewal.
    if (!m.viewSent && m.gate.view?.(performance.now()) !== undefined) return true;
    const room = this.room(m);
    if (room > 0 && !m.starved && m.requested === 0) {
      if (m.running === 0 || room * 2 >= this.bufferSize(m)) return true;
    }
    return m.target < m.slots && m.running <= m.target;
  }

  /** What to tell WaitForWork. */
  interest(models: readonly string[]): WorkInterest {
    const hungry: string[] = [];
    const grow: string[] = [];
    const known: string[] = [];
    const more: string[] = [];
    for (const m of this.#models.values()) {
      if (m.token === 0n) continue;
      known.push(m.model);
      if (m.starved && this.room(m) > 0) hungry.push(m.model);
      if (m.slots < m.target) grow.push(m.model);
      else if (!m.starved && m.slots < this.want(m)) more.push(m.model);
    }
    return { models, hungry, grow, known, newModels: this.slotsHeld < this.capacity, more };
  }
}
