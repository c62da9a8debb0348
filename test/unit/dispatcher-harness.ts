/**
 * Stand-ins for the dispatcher's unit tests (not a test file itself):
 *
 * - {@link ScriptedControlPlane}: a `LeaseClient` that plays a small control
 *   plane in memory (a pool of pending requests per model, one grant per
 *   model, claims renewed unless told otherwise), and that a test can make
 *   hold, fail or rewrite any answer;
 * - {@link GatedUpstream}: a loopback HTTP server whose requests wait until
 *   the test answers them (or answer on a script), counting each model's
 *   requests in flight and seeing aborts as closed sockets;
 * - {@link RecordingExecutor}: the real executor, logging when an attempt
 *   starts and ends into the control plane's event log, so a test can read
 *   the order of "request started" against "client called".
 *
 * Every event carries `performance.now()`, the dispatcher's own clock.
 */
import { EventEmitter, once } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { performance } from "node:perf_hooks";
import {
  ControlPlaneError,
  type DispatchLease,
  type LeaseClient,
  type LeaseRef,
  type LossReason,
  type ModelHold,
  type Report,
  type ReportAnswer,
  refKey,
  type SlotDemand,
  type SyncAnswer,
  type WorkInterest,
} from "../../src/dispatcher/lease-client.js";
import type { AttemptOutcome } from "../../src/domain/outcome.js";
import { HttpExecutor, type OutboundRequest } from "../../src/http/executor.js";

/** One thing that happened, in order. */
export type Event =
  | { kind: "sync"; at: number; demands: SlotDemand[]; renew: LeaseRef[] }
  | {
      kind: "report";
      at: number;
      reports: Report[];
      refill: Array<{ model: string; room: number }>;
    }
  | { kind: "wait"; at: number; interest: WorkInterest }
  | { kind: "answered"; at: number; call: "sync" | "report" | "wait" }
  | { kind: "execute"; at: number; customId: string }
  | { kind: "done"; at: number; customId: string; outcome: AttemptOutcome };

/** One model as the stand-in control plane knows it. */
export interface ModelState {
  /** Pending requests, oldest first. */
  pool: DispatchLease[];
  limit: number;
  /** When set, the target answered instead of min(want, limit). */
  target?: number;
  token: bigint;
  /** Holds to send with the next answer that mentions the model. */
  holdMs?: number;
  /** When the last hold was answered. */
  holdSentAt?: number;
}

/** What a held call waits for. */
interface Held<T> {
  event: Event;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
}

/** How the stand-in answers a kind of call. */
export type Mode = "auto" | "hold" | "fail";

/** An in-memory control plane; see the file header. */
export class ScriptedControlPlane extends EventEmitter implements LeaseClient {
  readonly events: Event[] = [];
  readonly models = new Map<string, ModelState>();
  /** Every report received, in order. */
  readonly reports: Report[] = [];
  syncMode: Mode = "auto";
  reportMode: Mode = "auto";
  /** Grants' and claims' ttl. */
  grantTtlMs = 30_000;
  claimTtlMs = 30_000;
  /** Claims (by request id) a renewal names lost, and why. */
  readonly loseClaims = new Map<string, LossReason>();
  /** Claims (by request id) renewals leave out (so their fence runs). */
  readonly skipRenewal = new Set<string>();
  /** Applied to every Sync answer (after the stand-in computed it). */
  editSync: ((a: SyncAnswer) => void) | undefined;
  /** Models whose grant the next Sync answers lost. */
  readonly loseGrants = new Set<string>();
  readonly heldSyncs: Array<Held<SyncAnswer> & { demands: SlotDemand[]; renew: LeaseRef[] }> = [];
  readonly heldReports: Array<
    Held<ReportAnswer> & { reports: Report[]; refill: Array<{ model: string; room: number }> }
  > = [];
  closed = false;
  #waits: Array<() => void> = [];
  #nextId = 0;
  #nextToken = 1000n;

  constructor(private readonly upstreamUrl: string) {
    super();
    this.setMaxListeners(0);
  }

  model(name: string): ModelState {
    let m = this.models.get(name);
    if (!m) {
      m = { pool: [], limit: 1_000, token: 0n };
      this.models.set(name, m);
    }
    return m;
  }

  /** Adds pending requests of `model` with these custom ids; wakes long polls. */
  offer(model: string, ...customIds: string[]): DispatchLease[] {
    const out = customIds.map((customId) => {
      const id = `req-${++this.#nextId}`;
      return this.#claim({
        ref: { requestId: id, token: 0n },
        batchId: "b",
        customId,
        model,
        attempt: 1,
        request: {
          method: "POST",
          url: `${this.upstreamUrl}/v1/x`,
          headers: [
            ["content-type", "application/json"],
            ["x-fusillade-request-id", id],
            ["x-fusillade-custom-id", customId],
          ],
          body: JSON.stringify({ model }),
        },
        ttlMs: this.claimTtlMs,
      });
    });
    this.model(model).pool.push(...out);
    this.#wakeWaits();
    return out;
  }

  /** Syncs received so far. */
  get syncs() {
    return this.events.filter((e): e is Extract<Event, { kind: "sync" }> => e.kind === "sync");
  }

  /** Report calls received so far. */
  get reportCalls() {
    return this.events.filter((e): e is Extract<Event, { kind: "report" }> => e.kind === "report");
  }

  /** The report of the request with custom id `customId`, once there is one. */
  reportOf(customId: string): Report | undefined {
    return this.reports.find((r) => this.#customIds.get(r.ref.requestId) === customId);
  }

  readonly #customIds = new Map<string, string>();

  /** Resolves once `predicate` holds, checked now and after every event; rejects after `timeoutMs`. */
  until(predicate: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
    return waitFor(this, "event", predicate, what, timeoutMs);
  }

  log(e: Event): void {
    this.events.push(e);
    this.emit("event", e);
  }

  sync(demands: SlotDemand[], renew: LeaseRef[], _timeoutMs: number): Promise<SyncAnswer> {
    const event: Event = { kind: "sync", at: performance.now(), demands, renew };
    this.log(event);
    if (this.closed) return Promise.reject(new ControlPlaneError("closed", true));
    if (this.syncMode === "fail")
      return Promise.reject(new ControlPlaneError("Sync: Unavailable: scripted", true));
    if (this.syncMode === "hold") {
      return new Promise((resolve, reject) => {
        this.heldSyncs.push({ event, demands, renew, resolve, reject });
        this.emit("event", event);
      });
    }
    // Answered on the next turn of the event loop, as a real call would be.
    return new Promise((resolve) =>
      setImmediate(() => {
        const answer = this.syncAnswer(demands, renew);
        this.editSync?.(answer);
        this.log({ kind: "answered", at: performance.now(), call: "sync" });
        resolve(answer);
      }),
    );
  }

  /** Answers the oldest held Sync as the stand-in would now (after `edit`). */
  releaseSync(edit?: (a: SyncAnswer) => void): void {
    const h = this.heldSyncs.shift();
    if (!h) throw new Error("no Sync is held");
    const answer = this.syncAnswer(h.demands, h.renew);
    this.editSync?.(answer);
    edit?.(answer);
    this.log({ kind: "answered", at: performance.now(), call: "sync" });
    h.resolve(answer);
  }

  /** The answer to a Sync: a lone holder's grant, claims from the pool, renewals. */
  syncAnswer(demands: SlotDemand[], renew: LeaseRef[]): SyncAnswer {
    const a: SyncAnswer = {
      grants: [],
      lostGrants: [],
      claims: [],
      renewed: [],
      lost: [],
      holds: [],
    };
    for (const d of demands) {
      const m = this.model(d.model);
      if (this.loseGrants.delete(d.model) || (d.token !== 0n && d.token !== m.token)) {
        a.lostGrants.push({ model: d.model, token: d.token });
        m.token = 0n;
        continue;
      }
      if (d.token === 0n) m.token = ++this.#nextToken;
      const target = m.target ?? Math.min(d.want, m.limit);
      // The server cuts to keep, then grows toward the target.
      const slots = d.token === 0n ? target : Math.max(d.keep, target);
      if (slots === 0 && target === 0) {
        m.token = 0n;
        continue;
      }
      a.grants.push({ model: d.model, token: m.token, slots, target, ttlMs: this.grantTtlMs });
      a.claims.push(...this.#take(m, d.room));
      this.#holds(d.model, m, a.holds);
    }
    for (const ref of renew) {
      const reason = this.loseClaims.get(ref.requestId);
      if (reason) a.lost.push({ ref, reason });
      else if (!this.skipRenewal.has(ref.requestId))
        a.renewed.push({ ref, ttlMs: this.claimTtlMs });
    }
    return a;
  }

  waitForWork(interest: WorkInterest, waitMs: number, signal: AbortSignal): Promise<string[]> {
    this.log({ kind: "wait", at: performance.now(), interest });
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.closed || signal.aborted) return done(() => reject(new Error("aborted")));
        const ready = [...this.models.entries()]
          .filter(([name, m]) => {
            if (m.pool.length === 0) return false;
            if (interest.hungry.includes(name) || interest.grow.includes(name)) return true;
            return interest.newModels && !interest.known.includes(name);
          })
          .map(([name]) => name);
        if (ready.length > 0) done(() => resolve(ready));
      };
      const timer = setTimeout(() => done(() => resolve([])), waitMs);
      const done = (settle: () => void) => {
        clearTimeout(timer);
        signal.removeEventListener("abort", check);
        this.#waits = this.#waits.filter((w) => w !== check);
        settle();
        this.log({ kind: "answered", at: performance.now(), call: "wait" });
      };
      signal.addEventListener("abort", check);
      this.#waits.push(check);
      check();
    });
  }

  reportsFail = false;

  report(
    reports: Report[],
    refill: Array<{ model: string; room: number }>,
    _timeoutMs: number,
  ): Promise<ReportAnswer> {
    const event: Event = { kind: "report", at: performance.now(), reports, refill };
    this.log(event);
    if (this.closed) return Promise.reject(new ControlPlaneError("closed", true));
    if (this.reportMode === "fail" || this.reportsFail)
      return Promise.reject(new ControlPlaneError("ReportResults: Unavailable: scripted", true));
    if (this.reportMode === "hold") {
      return new Promise((resolve, reject) => {
        this.heldReports.push({ event, reports, refill, resolve, reject });
        this.emit("event", event);
      });
    }
    return new Promise((resolve) =>
      setImmediate(() => {
        const answer = this.reportAnswer(reports, refill);
        this.log({ kind: "answered", at: performance.now(), call: "report" });
        resolve(answer);
      }),
    );
  }

  /** Records reports (an unsent release goes back to the pool) and claims for the refill. */
  reportAnswer(reports: Report[], refill: Array<{ model: string; room: number }>): ReportAnswer {
    this.reports.push(...reports);
    for (const r of reports) {
      if (r.kind !== "release" || !r.unsent || this.loseClaims.has(r.ref.requestId)) continue;
      const l = this.#issued.get(refKey(r.ref));
      // Back to pending: its next claim has a new token.
      if (l) this.model(l.model).pool.unshift(this.#claim({ ...l, ref: { ...l.ref } }));
    }
    const claims: DispatchLease[] = [];
    const holds: ModelHold[] = [];
    for (const { model, room } of refill) {
      const m = this.model(model);
      claims.push(...this.#take(m, room));
      this.#holds(model, m, holds);
    }
    if (reports.some((r) => r.kind === "release" && r.unsent)) this.#wakeWaits();
    return {
      dispositions: new Map(reports.map((r) => [refKey(r.ref), "recorded" as const])),
      claims,
      holds,
    };
  }

  /** Answers every held call: Syncs and reports as the stand-in would now. */
  releaseAll(): void {
    while (this.heldSyncs.length > 0) this.releaseSync();
    for (const h of this.heldReports.splice(0)) {
      const answer = this.reportAnswer(h.reports, h.refill);
      this.log({ kind: "answered", at: performance.now(), call: "report" });
      h.resolve(answer);
    }
  }

  /** Back to answering everything at once, held calls included (before stopping a dispatcher). */
  unfreeze(): void {
    this.syncMode = "auto";
    this.reportMode = "auto";
    this.reportsFail = false;
    this.releaseAll();
  }

  close(): void {
    this.closed = true;
    this.#wakeWaits();
  }

  readonly #issued = new Map<string, DispatchLease>();

  #claim(l: DispatchLease): DispatchLease {
    l.ref.token = ++this.#nextToken;
    l.ttlMs = this.claimTtlMs;
    this.#issued.set(refKey(l.ref), l);
    this.#customIds.set(l.ref.requestId, l.customId);
    return l;
  }

  #take(m: ModelState, room: number): DispatchLease[] {
    return m.pool.splice(0, Math.max(0, room));
  }

  #holds(model: string, m: ModelState, into: ModelHold[]): void {
    if (m.holdMs === undefined) return;
    into.push({ model, remainingMs: m.holdMs });
    m.holdMs = undefined;
    m.holdSentAt = performance.now();
  }

  #wakeWaits(): void {
    for (const w of [...this.#waits]) w();
  }
}

/** One request as the upstream saw it. */
export interface Hit {
  customId: string;
  model: string;
  arrivedAt: number;
  endedAt?: number;
  /** answered: the response finished; closed: the client went away first. */
  end?: "answered" | "closed";
  /** In flight of its model right after it arrived. */
  inFlightAtArrival: number;
  res: ServerResponse;
}

/** How to answer a request now; undefined: hold it until {@link GatedUpstream.answer}. */
export type Responder = (
  hit: Hit,
) => { status?: number; headers?: Record<string, string>; delayMs?: number } | undefined;

/** A loopback upstream; see the file header. */
export class GatedUpstream extends EventEmitter {
  readonly hits: Hit[] = [];
  readonly #inFlight = new Map<string, number>();
  readonly #sockets = new Set<Socket>();
  readonly #server: Server;
  #url = "";
  /** Default: hold every request. */
  respond: Responder = () => undefined;

  constructor() {
    super();
    this.setMaxListeners(0);
    this.#server = createServer((req, res) => this.#handle(req, res));
    this.#server.requestTimeout = 0;
    this.#server.on("connection", (s: Socket) => {
      this.#sockets.add(s);
      s.on("close", () => this.#sockets.delete(s));
    });
  }

  async listen(): Promise<this> {
    this.#server.listen(0, "127.0.0.1");
    await once(this.#server, "listening");
    this.#url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
    return this;
  }

  get url(): string {
    return this.#url;
  }

  inFlight(model: string): number {
    return this.#inFlight.get(model) ?? 0;
  }

  /** Most requests of `model` in flight at once, over hits from index `from` on. */
  peak(model: string, from = 0): number {
    return Math.max(
      0,
      ...this.hits
        .slice(from)
        .filter((h) => h.model === model)
        .map((h) => h.inFlightAtArrival),
    );
  }

  of(customId: string): Hit[] {
    return this.hits.filter((h) => h.customId === customId);
  }

  hit(customId: string): Hit {
    const h = this.of(customId)[0];
    if (!h) throw new Error(`${customId} never arrived`);
    return h;
  }

  /** Answers the held request of `customId`; resolves when the response has gone. */
  async answer(customId: string, status = 200, headers: Record<string, string> = {}): Promise<Hit> {
    const h = this.of(customId).find((x) => x.end === undefined);
    if (!h) throw new Error(`no request of ${customId} is waiting`);
    send(h, status, headers);
    await this.until(() => h.end !== undefined, `${customId} to end`);
    return h;
  }

  /** Resolves once `predicate` holds, checked now and after every arrival and end. */
  until(predicate: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
    return waitFor(this, "change", predicate, what, timeoutMs);
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    this.#server.close();
    if (this.#server.listening) await once(this.#server, "close");
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", () => {});
    req.on("end", () => {
      const model = String(
        (JSON.parse(Buffer.concat(chunks).toString("utf8")) as { model?: unknown }).model,
      );
      const n = (this.#inFlight.get(model) ?? 0) + 1;
      this.#inFlight.set(model, n);
      const raw = req.headers["x-fusillade-custom-id"];
      const h: Hit = {
        customId: (Array.isArray(raw) ? raw[0] : raw) ?? "",
        model,
        arrivedAt: performance.now(),
        inFlightAtArrival: n,
        res,
      };
      this.hits.push(h);
      const finish = (how: "answered" | "closed") => {
        if (h.end !== undefined) return;
        h.end = how;
        h.endedAt = performance.now();
        this.#inFlight.set(model, (this.#inFlight.get(model) ?? 1) - 1);
        this.emit("change");
      };
      res.on("finish", () => finish("answered"));
      res.on("close", () => finish("closed"));
      this.emit("change");
      const step = this.respond(h);
      if (step)
        setTimeout(() => send(h, step.status ?? 200, step.headers ?? {}), step.delayMs ?? 0);
    });
  }
}

function send(h: Hit, status: number, headers: Record<string, string>): void {
  if (h.res.destroyed || h.res.writableEnded) return;
  h.res.writeHead(status, { "content-type": "application/json", ...headers });
  h.res.end(JSON.stringify({ custom_id: h.customId }));
}

/** The real executor, logging each attempt's start and end into `cp`'s event log. */
export class RecordingExecutor extends HttpExecutor {
  constructor(private readonly cp: ScriptedControlPlane) {
    super({ connectionsPerOrigin: 64 });
  }

  override async execute(req: OutboundRequest, signal?: AbortSignal): Promise<AttemptOutcome> {
    const customId = req.headers.find(([k]) => k === "x-fusillade-custom-id")?.[1] ?? "";
    this.cp.log({ kind: "execute", at: performance.now(), customId });
    const outcome = await super.execute(req, signal);
    this.cp.log({ kind: "done", at: performance.now(), customId, outcome });
    return outcome;
  }
}

function waitFor(
  emitter: EventEmitter,
  name: string,
  predicate: () => boolean,
  what: string,
  timeoutMs: number,
): Promise<void> {
  if (predicate()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!predicate()) return;
      cleanup();
      resolve();
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      emitter.off(name, check);
    };
    emitter.on(name, check);
  });
}
