/**
 * The dispatcher's gate (../model-gate.ts) backed by a model's pacer (./model-pacer.ts):
 * what plugs pacing into the attempt runner. One per model, made when the dispatcher first
 * meets the model; it reads the model's grant (slots, and the rate shares that came with
 * them) from the model's entry at each admission, so a new grant reaches the pacer before
 * the next attempt without a hook of its own.
 *
 * The pacer's concurrency ceiling is the most slots this dispatcher has held of the model,
 * not the slots now: the slots already bound what starts (ModelSlots.canStart), and they
 * dip for a moment at every Sync (to what is kept) and to nothing between grants. Handing
 * such a dip to the pacer would clamp the concurrency it has learnt, and slow start would
 * begin again after every Sync.
 *
 * Token estimates cost a JSON parse of the body: only a model with a token rate pays it.
 */
import { performance } from "node:perf_hooks";
import type { PacingView } from "../../domain/capacity.js";
import type { DispatchLease } from "../lease-client.js";
import type { AttemptResult, GateFactory, GrantView, ModelGate } from "../model-gate.js";
import { ModelPacer, type PacerSnapshot } from "./model-pacer.js";
import { estimateTokens, usageTokens } from "./token-estimate.js";

const decoder = new TextDecoder();

/** The body as text (for the token estimate and the usage read). */
function text(body: Uint8Array | string): string {
  return typeof body === "string" ? body : decoder.decode(body);
}

/** A model's gate backed by its pacer. */
export class PacedGate implements ModelGate {
  readonly #grant: GrantView;
  /** Made at the first admission: by then the model has a grant, and its slots are known. */
  #pacer: ModelPacer | undefined;
  /** The ceiling handed to the pacer: the most slots held (see the file header). */
  #concurrency = 1;
  #rpm: number | undefined;
  #tpm: number | undefined;
  /** The admitted attempts: when, and the tokens charged (an attempt's `done` reads it). */
  readonly #admitted = new WeakMap<DispatchLease, { at: number; tokens: number }>();

  constructor(grant: GrantView) {
    this.#grant = grant;
  }

  admit(lease: DispatchLease, _running: number, now: number): number {
    const pacer = this.#follow(now);
    const tokens = this.#tpm === undefined ? 0 : estimateTokens(text(lease.request.body));
    const a = pacer.tryAdmit(now, tokens);
    if (a.ok) {
      this.#admitted.set(lease, { at: now, tokens });
      return 0;
    }
    if (!Number.isFinite(a.retryAtMs)) return Number.POSITIVE_INFINITY;
    // Never 0: 0 means "start now" to the runner.
    return Math.max(1, a.retryAtMs - now);
  }

  done(lease: DispatchLease, result: AttemptResult): void {
    const admitted = this.#admitted.get(lease);
    if (admitted === undefined || this.#pacer === undefined) return;
    this.#admitted.delete(lease);
    const o = result.outcome;
    // Our own abort says nothing about the upstream: counted as "no answer".
    const status = result.aborted ? 0 : o.statusCode;
    this.#pacer.onOutcome({
      nowMs: performance.now(),
      admittedAtMs: admitted.at,
      estimatedTokens: admitted.tokens,
      status,
      headers: o.headers,
      retryAfterMs: o.kind === "failure" ? o.retryAfterMs : undefined,
      usedTokens:
        this.#tpm !== undefined && o.kind === "completion" ? usageTokens(text(o.body)) : undefined,
    });
  }

  useful(now: number): number {
    // Asked before the first admission too: the first claims of a rated model must already
    // be kept to what its share can send.
    if (this.#pacer === undefined && this.#grant.granted === 0) return Number.POSITIVE_INFINITY;
    return this.#follow(now).useful(now);
  }

  demand(held: number): { rateWant: number; tokenWant: bigint } | undefined {
    return this.#pacer?.demand(held);
  }

  view(now: number): PacingView | undefined {
    const s = this.#pacer?.snapshot(now);
    if (s === undefined) return undefined;
    return {
      mode: s.mode,
      concurrency: s.concurrency,
      callsLastMinute: s.answeredLastMinute,
      throttledLastMinute: s.throttledLastMinute,
      windowSeconds: s.windowSeconds,
      running: s.inFlight,
    };
  }

  /** What status and /metrics show of the model's pacing; undefined before its first attempt. */
  snapshot(now = performance.now()): PacerSnapshot | undefined {
    return this.#pacer?.snapshot(now);
  }

  /** The pacer, made or handed a grant that changed since the last admission. */
  #follow(now: number): ModelPacer {
    const g = this.#grant;
    const concurrency = Math.max(this.#concurrency, g.granted);
    if (this.#pacer === undefined) {
      this.#concurrency = concurrency;
      this.#rpm = g.rpm;
      this.#tpm = g.tpm;
      this.#pacer = new ModelPacer(now, { concurrency, rpm: g.rpm, tpm: g.tpm });
      return this.#pacer;
    }
    if (concurrency !== this.#concurrency || g.rpm !== this.#rpm || g.tpm !== this.#tpm) {
      this.#concurrency = concurrency;
      this.#rpm = g.rpm;
      this.#tpm = g.tpm;
      this.#pacer.setLimits(now, { concurrency, rpm: g.rpm, tpm: g.tpm });
    }
    return this.#pacer;
  }
}

/** The dispatcher's default gates: a pacer per model. */
export const pacedGates: GateFactory = (_model, grant) => new PacedGate(grant);
