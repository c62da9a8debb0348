/**
 * A dispatcher: holds slot grants of models and a buffer of claimed requests
 * (docs/capacity-leases.md), sends each request upstream as soon as a slot of
 * its model is free, and reports the outcomes in batches, whose answers bring
 * the next claims. It keeps no durable state: whatever it loses, the control
 * plane gets back when the grants and claims expire.
 *
 * Parts (each in its own file):
 * - slots (./model-slots.ts): per model, the grant, the buffer, the running
 *   count; `pump()` (here) starts buffered claims while a slot is free;
 * - sync (./sync-loop.ts): Sync (renew, hand back, grow, claim) and the
 *   WaitForWork long poll;
 * - claims (./lease-table.ts): every claim with its own fence timer;
 * - report (./reporter.ts): outcomes batched into ReportResults calls that
 *   also refill the buffers.
 *
 * Modes: running → draining (stop(): nothing new starts, buffered claims go
 * back unsent; running requests get `graceMs` to finish) → releasing (the rest
 * are aborted and released; reports flushed for up to `shutdownFlushMs`; the
 * slots handed back) → stopped. While reports fail, nothing new starts.
 */
import { performance } from "node:perf_hooks";
import type { DispatcherConfig } from "../config/dispatcher-config.js";
import type { AttemptOutcome } from "../domain/outcome.js";
import { HttpExecutor } from "../http/executor.js";
import { traceHeaders } from "../http/trace-context.js";
import type { Logger } from "../logger.js";
import { DispatcherMetrics } from "../metrics/dispatcher-metrics.js";
import { ErrorStreaks } from "./error-streaks.js";
import { fenceMarginMs, renewIntervalMs } from "./fencing.js";
import {
  connectLeaseClient,
  type DispatchLease,
  type Disposition,
  type LeaseClient,
  type LossReason,
  type ModelHold,
  type Report,
} from "./lease-client.js";
import { type HeldLease, LeaseTable } from "./lease-table.js";
import { type ModelSlots, SlotBook } from "./model-slots.js";
import { type Refill, Reporter } from "./reporter.js";
import { SyncLoop } from "./sync-loop.js";

/** Counters since start, and gauges now. */
export interface DispatcherStats {
  /** Claims held now (buffered, running or awaiting their report). */
  held: number;
  /** Slots held now, per model. */
  slots: Record<string, number>;
  /** Requests being sent now. */
  running: number;
  /** Reports queued or in flight now. */
  reportsPending: number;
  /** Whether reports are failing now (no new work is taken meanwhile). */
  reportsFailing: boolean;
  /** Attempts that ended with a 2xx / with a failure / were given up (reported as releases). */
  completions: number;
  failures: number;
  releases: number;
  /** Claims received. */
  acquired: number;
  /** Given up: claim lost (renewal said so) / fenced (claim or grant not renewed in time) / at shutdown. */
  lost: number;
  fenced: number;
  shutdownAborts: number;
  /** The control plane's answers to our reports; `unreported`: never answered. */
  dispositions: Record<Disposition | "unreported", number>;
}

/** A running dispatcher. */
export interface Dispatcher {
  readonly id: string;
  /** A snapshot of the counters. */
  stats(): DispatcherStats;
  /** Its Prometheus metrics, text format (docs/observability.md). */
  metrics(): Promise<string>;
  /**
   * Stops taking leases, lets running requests finish for up to `graceMs`
   * (default: config.shutdownGraceMs), aborts and releases the rest, flushes
   * reports, and closes connections. Idempotent.
   */
  stop(graceMs?: number): Promise<void>;
}

/** Stand-ins for tests. */
export interface DispatcherDeps {
  client?: LeaseClient;
  executor?: HttpExecutor;
  /** Where the counters go (a thread's or a process's registry); default: a new one. */
  metrics?: DispatcherMetrics;
}

/** The counters of a dispatcher that has done nothing yet. */
export function zeroCounts() {
  return {
    acquired: 0,
    completions: 0,
    failures: 0,
    releases: 0,
    lost: 0,
    fenced: 0,
    shutdownAborts: 0,
    dispositions: { recorded: 0, requeued: 0, lost: 0, unreported: 0 },
  };
}

/** TTL assumed until the first grant tells us (only the renewal period depends on it). */
const TTL_UNKNOWN_MS = 30_000;

/** Starts a dispatcher with `config`; it runs until `stop()`. */
export function startDispatcher(
  config: Readonly<DispatcherConfig>,
  parentLog: Logger,
  deps: DispatcherDeps = {},
): Dispatcher {
  const log = parentLog.child({ dispatcher: config.id });
  const client =
    deps.client ??
    connectLeaseClient(config.controlPlaneUrl, config.id, config.token, {
      ca: config.ca,
      insecure: config.insecureLoopbackTls,
    });
  const executor =
    deps.executor ??
    new HttpExecutor({
      connectTimeoutMs: config.connectTimeoutMs,
      firstByteTimeoutMs: config.firstByteTimeoutMs,
      totalTimeoutMs: config.totalTimeoutMs,
      maxResponseBytes: config.maxResponseBytes,
      // undici queues requests beyond the pool size, and that wait eats into
      // the first-byte timeout: never fewer connections than requests running.
      connectionsPerOrigin: Math.max(256, config.capacity),
      denyPrivateNetworks: config.denyPrivateNetworks,
      allowedHosts: config.allowedHosts,
    });
  const counts = zeroCounts();
  const errorStreaks = new ErrorStreaks(log);
  const metrics = deps.metrics ?? new DispatcherMetrics();
  let ttlMs = TTL_UNKNOWN_MS;
  const margin = (ttl: number) => fenceMarginMs(ttl, config.fenceMarginMs);
  const book = new SlotBook(config.capacity, config.prefetch);
  const stopping = new AbortController();
  const table = new LeaseTable(margin, (e) => {
    if (e.phase === "queued") {
      // Never started: out of the buffer, back to the control plane unsent.
      dequeue(e);
      void settle(e, {
        ref: e.ref,
        kind: "release",
        reason: "claim not renewed in time",
        unsent: true,
      });
      return;
    }
    counts.fenced++;
    metrics.claims("fenced");
    log.warn(
      { requestId: e.ref.requestId, model: e.lease.model },
      "claim not renewed in time: request aborted (self-fenced)",
    );
  });
  const reporter = new Reporter(
    client,
    {
      batchSize: config.reportBatchSize,
      maxBytes: config.reportMaxBytes,
      lingerMs: config.reportLingerMs,
      rpcTimeoutMs: config.rpcTimeoutMs,
    },
    log,
    {
      refill(): Refill[] {
        // Stopping: claims would only go back again (and their release's report would ask again).
        if (stopping.signal.aborted) return [];
        const out: Refill[] = [];
        for (const m of book.all()) {
          const room = m.starved ? 0 : book.room(m);
          if (room <= 0) continue;
          m.requested += room;
          out.push({ model: m.model, room });
        }
        return out;
      },
      onClaims(claims, holds, asked, sentAt) {
        intake({ claims, holds }, new Map(asked.map((a) => [a.model, a.room])), sentAt);
        // Every model, not only those that got claims: a reporter that was
        // failing held back work that is buffered already.
        for (const m of book.all()) pump(m);
        sync.poke();
      },
      onCall(size) {
        metrics.reportBatch(size);
      },
      onRefillFailed(asked) {
        for (const a of asked) book.get(a.model).requested -= a.room;
      },
      onHealthy() {
        for (const m of book.all()) pump(m);
      },
    },
  );

  function dequeue(e: HeldLease): void {
    const q = book.find(e.lease.model)?.queue;
    const i = q?.indexOf(e) ?? -1;
    if (q && i >= 0) q.splice(i, 1);
  }

  /** Claims arrived: buffer them, apply holds, start what may start. */
  function intake(
    answer: { claims: DispatchLease[]; holds: ModelHold[] },
    asked: Map<string, number>,
    sentAt: number,
  ): void {
    const got = new Map<string, number>();
    metrics.claims("acquired", answer.claims.length);
    for (const c of answer.claims) {
      counts.acquired++;
      if (c.ttlMs > 0 && c.ttlMs !== ttlMs) ttlMs = c.ttlMs;
      const entry = table.add(c, sentAt);
      got.set(c.model, (got.get(c.model) ?? 0) + 1);
      if (stopping.signal.aborted) {
        table.giveUp(entry, "shutdown", "claimed while shutting down");
        void settle(entry, {
          ref: entry.ref,
          kind: "release",
          reason: "shutting down",
          unsent: true,
        });
        continue;
      }
      book.get(c.model).queue.push(entry);
    }
    for (const [model, n] of asked) {
      const m = book.get(model);
      m.requested -= n;
      // Fewer than asked: no backlog now; WaitForWork tells us when there is.
      m.starved = (got.get(model) ?? 0) < n;
    }
    const now = performance.now();
    for (const h of answer.holds) {
      const m = book.get(h.model);
      m.heldUntil = Math.max(m.heldUntil, now + h.remainingMs);
      scheduleAfterHold(m);
    }
    for (const model of got.keys()) pump(book.get(model));
  }

  const holdTimers = new Map<string, NodeJS.Timeout>();
  function scheduleAfterHold(m: ModelSlots): void {
    clearTimeout(holdTimers.get(m.model));
    const t = setTimeout(
      () => {
        // Timers may fire a little before performance.now() reaches the moment.
        if (performance.now() < m.heldUntil) scheduleAfterHold(m);
        else pump(m);
      },
      Math.max(0, m.heldUntil - performance.now()) + 1,
    );
    t.unref();
    holdTimers.set(m.model, t);
  }

  /** Starts buffered claims of `m` while a slot is free. */
  function pump(m: ModelSlots): void {
    if (stopping.signal.aborted || reporter.failing) return;
    const now = performance.now();
    while (m.queue.length > 0 && m.canStart(now)) {
      const entry = m.queue.shift()!;
      if (entry.gaveUp !== undefined) continue;
      table.start(entry);
      m.running++;
      void run(entry, m);
    }
  }

  /** The grant of `m` is gone or was not renewed in time: abort its running requests. */
  function fence(m: ModelSlots, why: "fenced" | "lost"): void {
    const wasRunning = m.running;
    if (m.token !== 0n) metrics.grants(why);
    m.token = 0n;
    m.slots = 0;
    m.target = 0;
    clearTimeout(m.fenceTimer);
    let aborted = 0;
    for (const e of table.running()) {
      if (e.lease.model === m.model && table.giveUp(e, "fenced", `slot grant ${why}`)) aborted++;
    }
    counts.fenced += aborted;
    metrics.claims("fenced", aborted);
    // Without a grant the buffer cannot run: give it back (unsent) for others
    // to take rather than hold it until a new grant comes, if ever.
    for (const e of m.queue.splice(0)) {
      if (table.giveUp(e, "fenced", `slot grant ${why}`)) {
        void settle(e, { ref: e.ref, kind: "release", reason: `slot grant ${why}`, unsent: true });
      }
    }
    if (wasRunning > 0 || why === "lost") {
      log.warn({ model: m.model, aborted, why }, "slot grant lost: the model's requests aborted");
    }
  }

  const onLost = (entry: HeldLease, reason: LossReason) => {
    // An attempt already over keeps its report: the control plane judges it
    // (LOST for an expired claim; recorded for a cancelled batch's request).
    const wasQueued = entry.phase === "queued";
    if (table.giveUp(entry, "lost", `claim lost: ${reason}`)) {
      counts.lost++;
      metrics.claims("lost");
      if (wasQueued) {
        dequeue(entry);
        void settle(entry, {
          ref: entry.ref,
          kind: "release",
          reason: `claim lost: ${reason}`,
          unsent: true,
        });
        return;
      }
      const fields = { requestId: entry.ref.requestId, model: entry.lease.model, reason };
      // Expired while still running means the fence came too late: the
      // request may have overlapped with its next claim. Worth a loud line.
      if (reason === "expired")
        log.warn(fields, "claim expired while its request ran (fence margin too small?)");
      else log.info(fields, "claim lost: request aborted");
    }
  };

  const sync = new SyncLoop(
    {
      book,
      table,
      intake,
      fence,
      onLost,
      marginFor: margin,
      metrics,
      renewIntervalMs: () => renewIntervalMs(ttlMs, margin(ttlMs), config.renewIntervalMs),
      pumpAll: () => {
        for (const m of book.all()) pump(m);
      },
    },
    client,
    { models: config.models, waitMs: config.acquireWaitMs, rpcTimeoutMs: config.rpcTimeoutMs },
    log,
  );

  /** Reports `report` for `entry`, then lets go of it. */
  async function settle(entry: HeldLease, report: Report): Promise<void> {
    table.toReporting(entry);
    if (report.kind === "release") {
      counts.releases++;
      metrics.claims("released");
    }
    // Past its real expiry (the fence plus its margin) the report could only be LOST.
    const disposition = await reporter.submit(
      report,
      () => entry.deadline + margin(entry.lease.ttlMs),
    );
    counts.dispositions[disposition ?? "unreported"]++;
    if (log.isLevelEnabled("debug")) {
      log.debug(
        {
          requestId: entry.ref.requestId,
          model: entry.lease.model,
          attempt: entry.lease.attempt,
          report: report.kind === "release" ? "release" : report.outcome.kind,
          status: report.kind === "outcome" ? report.outcome.statusCode : undefined,
          disposition,
        },
        "request done",
      );
    }
    table.remove(entry);
  }

  /** Runs one claim: send; the slot starts the next buffered claim at once; then report. */
  async function run(entry: HeldLease, m: ModelSlots): Promise<void> {
    let outcome: AttemptOutcome;
    const started = performance.now();
    try {
      // A new span per attempt in the request's trace (docs/observability.md).
      const request = entry.lease.request;
      const headers = [
        ...request.headers,
        ...traceHeaders(entry.ref.requestId, entry.lease.batchId),
      ];
      outcome = await executor.execute({ ...request, headers }, entry.signal);
    } catch (e) {
      // execute() does not throw; should it ever, give the request back.
      log.error({ err: e, requestId: entry.ref.requestId }, "executor threw");
      table.giveUp(entry, "shutdown", "executor error");
      outcome = {
        kind: "failure",
        statusCode: 0,
        code: "aborted",
        message: String(e),
        retriable: false,
        bodyExcerpt: new Uint8Array(0),
        headers: {},
      };
    }
    m.running--;
    metrics.attempt(m.model, outcome, (performance.now() - started) / 1000);
    if (entry.gaveUp === undefined) errorStreaks.note(entry.lease.request.url, m.model, outcome);
    if (
      outcome.kind === "failure" &&
      outcome.statusCode === 429 &&
      outcome.retryAfterMs !== undefined &&
      outcome.retryAfterMs > 0
    ) {
      // Our own 429: hold the model here at once; the control plane holds it fleet-wide.
      metrics.hold(m.model);
      if (performance.now() >= m.heldUntil) {
        log.info(
          {
            model: m.model,
            retryAfterMs: outcome.retryAfterMs,
            until: new Date(Date.now() + outcome.retryAfterMs).toISOString(),
          },
          "model held back by a 429 until its Retry-After has passed",
        );
      }
      m.heldUntil = Math.max(m.heldUntil, performance.now() + outcome.retryAfterMs);
      scheduleAfterHold(m);
    }
    let report: Report;
    if (entry.gaveUp !== undefined && outcome.kind === "failure") {
      // Our own abort: no outcome, the request goes back (or ends with its batch).
      report = {
        ref: entry.ref,
        kind: "release",
        reason: `${entry.gaveUp.reason}: ${entry.gaveUp.detail}`,
        unsent: false,
      };
    } else {
      // A response that made it in before the abort is still reported.
      report = { ref: entry.ref, kind: "outcome", outcome };
      if (outcome.kind === "completion") counts.completions++;
      else counts.failures++;
    }
    pump(m);
    // After the report is queued: its call, when it goes at once, takes the
    // buffer's room, and then no Sync is needed for it.
    const settled = settle(entry, report);
    sync.poke();
    await settled;
  }

  metrics.bind({
    *models() {
      const now = performance.now();
      for (const m of book.all()) {
        yield {
          model: m.model,
          running: m.running,
          slots: m.token === 0n ? 0 : m.slots,
          buffered: m.queue.length,
          held: now < m.heldUntil,
        };
      }
    },
    reportsPending: () => reporter.pending,
    reportsFailing: () => reporter.failing,
  });
  sync.start();
  log.info(
    {
      controlPlane: config.controlPlaneUrl,
      capacity: config.capacity,
      prefetch: config.prefetch,
      models: config.models,
    },
    "dispatcher started",
  );

  let stopped: Promise<void> | undefined;
  async function shutdown(graceMs: number): Promise<void> {
    log.info({ graceMs, running: table.running().length }, "dispatcher stopping");
    stopping.abort();
    await sync.stop();
    for (const m of book.all()) {
      for (const e of m.queue.splice(0)) {
        table.giveUp(e, "shutdown", "dispatcher shutting down");
        void settle(e, {
          ref: e.ref,
          kind: "release",
          reason: "dispatcher shutting down",
          unsent: true,
        });
      }
    }
    const graceEnd = performance.now() + graceMs;
    while (table.running().length > 0 && performance.now() < graceEnd) {
      await table.changed(undefined, graceEnd - performance.now());
    }
    for (const e of table.running()) {
      if (table.giveUp(e, "shutdown", "dispatcher shutting down")) counts.shutdownAborts++;
    }
    const flushEnd = performance.now() + config.shutdownFlushMs;
    while (table.size > 0 && performance.now() < flushEnd) {
      await table.changed(undefined, flushEnd - performance.now());
    }
    if (table.size > 0) {
      log.warn(
        { unreported: table.size },
        "stopping with unreported outcomes; their claims will expire",
      );
    }
    reporter.stop();
    // Let settle() see its report dropped and let go of the claim.
    while (table.size > 0) await table.changed(undefined, 100);
    await sync.release();
    for (const m of book.all()) clearTimeout(m.fenceTimer);
    for (const t of holdTimers.values()) clearTimeout(t);
    client.close();
    await executor.close();
    log.info(stats(), "dispatcher stopped");
  }

  function stats(): DispatcherStats {
    return {
      held: table.size,
      slots: Object.fromEntries(
        book
          .all()
          .filter((m) => m.token !== 0n)
          .map((m) => [m.model, m.slots]),
      ),
      running: table.running().length,
      reportsPending: reporter.pending,
      reportsFailing: reporter.failing,
      ...counts,
      dispositions: { ...counts.dispositions },
    };
  }

  return {
    id: config.id,
    stats,
    metrics: () => metrics.text(),
    stop(graceMs = config.shutdownGraceMs) {
      stopped ??= shutdown(graceMs);
      return stopped;
    },
  };
}
