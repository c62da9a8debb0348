/**
 * A model's effective concurrency when its meter is unknown (docs/pacing.md,
 * "The control law"): additive increase, multiplicative decrease, on the
 * upstream's "slow down" answers (429, or 503 with Retry-After).
 *
 * - Decrease at once: a throttle of an attempt sent since the last cut cuts
 *   by `backoff` (0.9). Throttles of attempts sent before it were sent under
 *   the old limit and say nothing new: a burst of 429s from one moment
 *   counts once.
 * - Decrease on evidence: attempts are grouped in cohorts by when they were
 *   sent (about a round trip each, and at least MIN_COHORT of them). When a
 *   cohort has all been answered and fewer than METER_EVIDENCE of its
 *   answers were accepted, a meter is in evidence: the limit is cut to the
 *   cohort's limit times the share accepted (a meter refusing half means
 *   half the concurrency), and for `meterMemoryMs` the probe is slow (below)
 *   and starts are spaced (startIntervalMs); each throttle meanwhile renews
 *   that memory. A cohort is judged once all answered, before the next start
 *   (`judge`), not at a later cohort's next answer; and as soon as more than a
 *   quarter of it was refused (a meter answers 429 at once, successes a round
 *   trip later), to the share that may still be accepted. 3 % random 429s (overload of a
 *   shared upstream, not a meter) almost never refuse a quarter of a cohort:
 *   they cost only the request that got it and a 10 % cut now and then.
 * - Increase, per success of an attempt sent since the last cut while at
 *   least half the limit runs: +1/2 in slow start (the limit grows by half per
 *   round trip: SLOW_START_STEP), then +1/limit (one per round trip). A 429
 *   in slow start pauses it until its cohort is judged: a meter ends it, more
 *   than a tenth refused ends it, fewer (random 429s) let it go on. While a
 *   meter is in evidence, at most `probePerSecond` (10 %) of the limit a
 *   second: at a small limit one per round trip overshoots the meter every
 *   round trip.
 * Figures (simulated, test/unit/pacing/model-pacer.test.ts; 500 slots on a
 * 3,000/min meter at 50 ms, no headers): one per round trip throughout,
 * 11.5 % of calls answered 429; with the slow probe, 6.5 %; judging a
 * cohort before the next start and renewing the meter's memory, 3.6 %, at
 * 102 % of the meter's rate. The limit stays within [min, max] (max: the slots held).
 * Pure: "now" (monotonic ms) comes in as an argument.
 */

export interface AimdOptions {
  /** @default 1 */
  min?: number;
  /** The ceiling (the slots held). */
  max: number;
  /** Where slow start begins. @default 8 */
  initial?: number;
  /** The cut on a throttle, as a multiplier. @default 0.9 */
  backoff?: number;
  /** Shortest cohort. @default 50 */
  minWindowMs?: number;
  /** How long a meter stays in evidence after a cohort showed one. @default 10_000 */
  meterMemoryMs?: number;
  /** The slow probe: most growth a second, as a share of the limit. @default 0.1 */
  probePerSecond?: number;
  /**
   * Slow start's clock while no answer comes: a limit all in use that heard nothing for this
   * long (or a round trip, once one is known) doubles. @default 50
   */
  idleGrowthMs?: number;
}

/**
 * Slow start's growth per success: the limit × 1.5 per round trip, not TCP's × 2. Against
 * a meter that sends no headers, the 429s of slow start are what it sends between the
 * meter running dry and the first 429 coming back, so they follow its rate then; × 1.5
 * reaches a dry meter at about 0.6 of × 2's rate (ln 1.5 / ln 2). Measured, bench pacing
 * "bare" alternating (load 3–5): 6.4, 5.7, 10.4 % of calls 429 against 9.2, 9.5, 12.9 %;
 * dispatch c (500 ms, limit 100) 0.95 of the limit in use either way, since before the
 * first answer the limit still doubles every idle period.
 */
const SLOW_START_STEP = 0.5;

/** Weight of a new latency sample in the smoothed latency. */
const LATENCY_GAIN = 0.125;
/**
 * Fewest attempts in a cohort, and the share accepted below which it shows
 * a meter: 3 % random 429s refuse a quarter of 20 once in ~3,000 cohorts;
 * of 8 (two refused) once in ~50, which in the simulation held a 10-slot
 * model near 2 for good.
 */
const MIN_COHORT = 20;
const METER_EVIDENCE = 0.75;
/**
 * In slow start, the most a cohort with a 429 may refuse and still let slow start go on:
 * 3 % random 429s refuse more than a tenth of a 20-cohort about once in 50, of a larger one
 * almost never; a meter that its burst hid until now refuses more.
 */
const STRAY_SHARE = 0.1;
/**
 * The lowest limit: below 1, the limit is a share of one slot's round trips (0.4 at 20 ms
 * starts one attempt every 50 ms, 20 a second), which is how one dispatcher keeps to a
 * meter that accepts fewer than one request per round trip.
 */
const MIN_FRACTION = 0.05;

interface Cohort {
  start: number;
  /** When its last attempt was admitted. */
  last: number;
  /** The limit when it began. */
  limit: number;
  sent: number;
  ok: number;
  throttled: number;
  /** Ended without an answer (network error, timeout, abort). */
  none: number;
}

export class AimdLimit {
  readonly #min: number;
  #max: number;
  readonly #backoff: number;
  readonly #minWindowMs: number;
  readonly #meterMemoryMs: number;
  readonly #probePerSecond: number;
  #limit: number;
  /** Slow start, until a meter, or a cohort refusing more than stray 429s would, ends it. */
  #slowStart = true;
  /**
   * In slow start, the cohort of the last throttle until it is judged: a 429 alone does not
   * end slow start (3 % random 429s at a limit of 500 would hold the model near its start
   * for good, growing one slot a round trip); its cohort showing a meter does. Meanwhile
   * slow start does not grow.
   */
  #doubt: Cohort | undefined;
  #lastCutAt = Number.NEGATIVE_INFINITY;
  #meterUntil = Number.NEGATIVE_INFINITY;
  #latencyMs: number | undefined;
  /** Cohorts not fully answered yet, oldest first; the last one takes new attempts. */
  readonly #cohorts: Cohort[] = [];
  readonly #idleGrowthMs: number;
  /** When slow start last grew (or began): its clock while no answer comes. */
  #grownAt: number | undefined;

  constructor(o: AimdOptions) {
    this.#idleGrowthMs = o.idleGrowthMs ?? 50;
    this.#min = Math.max(1, o.min ?? 1);
    this.#max = Math.max(this.#min, o.max);
    this.#backoff = o.backoff ?? 0.9;
    this.#minWindowMs = o.minWindowMs ?? 50;
    this.#meterMemoryMs = o.meterMemoryMs ?? 10_000;
    this.#probePerSecond = o.probePerSecond ?? 0.1;
    this.#limit = Math.min(this.#max, Math.max(this.#min, o.initial ?? 8));
  }

  /** Attempts that may run at once now. */
  get limit(): number {
    return Math.max(this.#min, Math.floor(this.#limit));
  }

  /** The smoothed latency of successes (undefined before the first). */
  get latencyMs(): number | undefined {
    return this.#latencyMs;
  }

  /** The limit with its fraction (below 1: a share of one slot's round trips). */
  get rawLimit(): number {
    return this.#limit;
  }

  /** Whether a cut was not grown back from (for status: "backing off"). */
  get backingOff(): boolean {
    return !this.slowStart && this.#limit < this.#max;
  }

  /**
   * Growing freely: before the first cut, or after 429s that proved stray (nothing has said
   * "slow down" that still counts). Not while a 429's cohort awaits its verdict.
   */
  get slowStart(): boolean {
    return this.#slowStart && this.#doubt === undefined;
  }

  /**
   * Ms between starts while a meter is in evidence, or the limit is below 1 (0 otherwise):
   * a round trip / the limit with its fraction, so 2.5 at 50 ms is 50/s where a whole number
   * of slots swings between 40 and 60, and 0.4 at 20 ms is 20/s.
   */
  startIntervalMs(nowMs: number): number {
    if (this.#latencyMs === undefined) return 0;
    if (nowMs >= this.#meterUntil && this.#limit >= 1) return 0;
    return this.#latencyMs / Math.max(MIN_FRACTION, Math.min(this.#limit, this.#max));
  }

  /**
   * Slow start without answers: a limit all in use (`inFlight`) that heard nothing for a
   * round trip (`idleGrowthMs` before the first) doubles; an upstream that holds its answers
   * (a slow model, a test that hangs them) must not keep the limit at its start. Meters
   * answer at once, so their 429s cut before this grows. Answers when to ask again
   * (Infinity: no growth is due, an answer will move the limit).
   */
  growIdle(nowMs: number, inFlight: number): number {
    if (!this.slowStart || this.#limit >= this.#max || inFlight < this.limit) {
      return Number.POSITIVE_INFINITY;
    }
    const period = Math.max(this.#minWindowMs, this.#latencyMs ?? this.#idleGrowthMs);
    this.#grownAt ??= nowMs;
    if (nowMs - this.#grownAt < period) return this.#grownAt + period;
    this.#limit = Math.min(this.#max, this.#limit * 2);
    this.#grownAt = nowMs;
    return nowMs;
  }

  /** A new ceiling (slots held); the limit is kept within it. */
  setMax(max: number): void {
    this.#max = Math.max(this.#min, max);
    this.#limit = Math.min(this.#limit, this.#max);
  }

  /** An attempt was admitted at `nowMs` (the `admittedAtMs` of its outcome). */
  onAdmit(nowMs: number): void {
    this.#grownAt ??= nowMs;
    let c = this.#cohorts[this.#cohorts.length - 1];
    if (c === undefined || this.#closed(c, nowMs)) {
      c = { start: nowMs, last: nowMs, limit: this.#limit, sent: 0, ok: 0, throttled: 0, none: 0 };
      this.#cohorts.push(c);
    }
    c.sent++;
    c.last = nowMs;
  }

  /**
   * Judges the cohorts that are fully answered, the last one included (once it has
   * MIN_COHORT attempts): the pacer asks before each start, so a cohort that showed a meter
   * cuts the limit before the next attempt, not at a later cohort's answer (a whole round
   * trip of starts later).
   */
  judge(nowMs: number): void {
    this.#judge(nowMs, true);
  }

  /**
   * A cohort takes no more attempts once it is a round trip long and has MIN_COHORT of
   * them: the next attempt starts a new one (after its last attempt, so an outcome finds its
   * cohort by its admission time).
   */
  #closed(c: Cohort, nowMs: number): boolean {
    const length = Math.max(this.#minWindowMs, this.#latencyMs ?? 0);
    return nowMs - c.start >= length && c.sent >= MIN_COHORT && nowMs > c.last;
  }

  /** An attempt admitted at `admittedAtMs` was answered, not throttled, with `inFlight` running (itself included). */
  onSuccess(nowMs: number, admittedAtMs: number, inFlight: number): void {
    const sample = Math.max(0, nowMs - admittedAtMs);
    this.#latencyMs =
      this.#latencyMs === undefined
        ? sample
        : this.#latencyMs + LATENCY_GAIN * (sample - this.#latencyMs);
    this.#answer(nowMs, admittedAtMs, "ok");
    if (admittedAtMs < this.#lastCutAt) return;
    if (inFlight * 2 < this.#limit) return; // the limit is not what holds us back
    if (this.#slowStart) this.#grownAt = nowMs;
    let step = this.slowStart ? SLOW_START_STEP : 1 / Math.max(1, this.#limit);
    if (nowMs < this.#meterUntil || this.#limit < 1) {
      // Per success, latency/1000 of a second passes per slot in use.
      step = Math.min(step, (this.#probePerSecond * this.#latencyMs) / 1000);
    }
    this.#limit = Math.min(this.#max, this.#limit + step);
  }

  /** An attempt admitted at `admittedAtMs` was throttled; answers whether that cut the limit. */
  onThrottle(nowMs: number, admittedAtMs: number): boolean {
    const cohort = this.#answer(nowMs, admittedAtMs, "throttled");
    if (admittedAtMs < this.#lastCutAt) return false;
    if (this.#slowStart && cohort !== undefined) {
      // Slow start waits for the cohort's verdict (#judge): a meter, or a stray 429.
      this.#doubt = cohort;
      this.#shrink(nowMs, this.#limit * this.#backoff);
    } else {
      this.#cut(nowMs, this.#limit * this.#backoff);
    }
    return true;
  }

  /** An attempt admitted at `admittedAtMs` ended with no answer. */
  onNoAnswer(nowMs: number, admittedAtMs: number): void {
    this.#answer(nowMs, admittedAtMs, "none");
  }

  /** Lowers the limit to `to` (never raises it); attempts sent before now are under the old one. */
  #shrink(nowMs: number, to: number): void {
    this.#limit = Math.max(this.#min > 1 ? this.#min : MIN_FRACTION, Math.min(this.#limit, to));
    this.#lastCutAt = nowMs;
  }

  /** A cut that ends slow start. */
  #cut(nowMs: number, to: number): void {
    this.#shrink(nowMs, to);
    this.#slowStart = false;
    this.#doubt = undefined;
  }

  /** Counts an answer in its cohort (answered); judges the cohorts fully answered. */
  #answer(
    nowMs: number,
    admittedAtMs: number,
    kind: "ok" | "throttled" | "none",
  ): Cohort | undefined {
    let i = this.#cohorts.length - 1;
    while (i > 0 && this.#cohorts[i]!.start > admittedAtMs) i--;
    const c = this.#cohorts[i];
    if (c === undefined) return undefined;
    c[kind]++;
    if (kind === "throttled") {
      if (nowMs < this.#meterUntil) {
        // A meter still refusing us is still there.
        this.#meterUntil = nowMs + this.#meterMemoryMs;
      }
      // Refused past what the rest of its answers could make up: the cohort shows a
      // meter already (a meter answers 429 at once, its successes a round trip later).
      // The limit follows the share that may still be accepted, lower with each 429.
      if (c.sent >= MIN_COHORT && c.throttled > c.sent * (1 - METER_EVIDENCE)) {
        this.#meter(nowMs, c.limit * ((c.sent - c.throttled) / c.sent));
      }
    }
    this.#judge(nowMs, false);
    return c;
  }

  /** A meter is in evidence: the limit goes to `to`, the probe is slow and starts are spaced. */
  #meter(nowMs: number, to: number): void {
    this.#cut(nowMs, to);
    this.#meterUntil = nowMs + this.#meterMemoryMs;
  }

  /** Judges the fully answered cohorts, oldest first; the last one only when `last`. */
  #judge(nowMs: number, last: boolean): void {
    while (this.#cohorts.length > 0) {
      const first = this.#cohorts[0]!;
      if (first.ok + first.throttled + first.none < first.sent) break;
      if (this.#cohorts.length === 1 && !(last && first.sent >= MIN_COHORT)) break;
      this.#cohorts.shift();
      const answered = first.ok + first.throttled;
      if (answered >= MIN_COHORT && first.ok < answered * METER_EVIDENCE) {
        this.#meter(nowMs, first.limit * (first.ok / answered));
      } else if (first === this.#doubt) {
        this.#doubt = undefined;
        // A few 429s (random ones): slow start goes on. More, short of a meter: it ends.
        if (first.throttled > answered * STRAY_SHARE) this.#slowStart = false;
      }
    }
  }
}
