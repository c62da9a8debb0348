/**
 * A dispatcher: takes model-scoped leases from the control plane, sends each
 * request upstream, renews the leases while requests run, and reports the
 * outcomes. It keeps no durable state: whatever it loses, the control plane
 * gets back when the leases expire.
 *
 * Loops (each in its own file):
 * - acquire (here): one AcquireLeases long poll at a time, for up to
 *   capacity − held leases; a new poll starts as soon as the last one answers
 *   and a slot is free. Paused while every slot is held, while reports are
 *   failing, and for good once stopping;
 * - renew (./renewer.ts): one RenewLeases call for all held leases per interval;
 * - fence (./lease-table.ts): a timer per running request at its deadline;
 * - report (./reporter.ts): outcomes batched into ReportResults calls.
 *
 * Modes: running → draining (stop(): no new leases; running requests get
 * `graceMs` to finish) → releasing (the rest are aborted and released; reports
 * flushed for up to `shutdownFlushMs`) → stopped.
 */
import { performance } from "node:perf_hooks";
import type { DispatcherConfig } from "../config/dispatcher-config.js";
import type { AttemptOutcome } from "../domain/outcome.js";
import { HttpExecutor } from "../http/executor.js";
import type { Logger } from "../logger.js";
import { Backoff, sleep } from "./backoff.js";
import { fenceMarginMs, renewIntervalMs } from "./fencing.js";
import {
  connectLeaseClient,
  type DispatchLease,
  type Disposition,
  type LeaseClient,
  type LossReason,
  type Report,
} from "./lease-client.js";
import { type HeldLease, LeaseTable } from "./lease-table.js";
import { Renewer } from "./renewer.js";
import { Reporter } from "./reporter.js";

/** Counters since start, and gauges now. */
export interface DispatcherStats {
  /** Leases held now (running or awaiting their report). */
  held: number;
  /** Requests being sent now. */
  running: number;
  /** Reports queued or in flight now. */
  reportsPending: number;
  /** Whether reports are failing now (no new work is taken meanwhile). */
  reportsFailing: boolean;
  acquired: number;
  /** Attempts that ended with a 2xx / with a failure / were given up (reported as releases). */
  completions: number;
  failures: number;
  releases: number;
  /** Given up: lease lost (renewal said so) / fenced (not renewed in time) / at shutdown. */
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
}

/** TTL assumed until the first lease tells us (only the renewal period depends on it). */
const TTL_UNKNOWN_MS = 30_000;

/** Starts a dispatcher with `config`; it runs until `stop()`. */
export function startDispatcher(
  config: Readonly<DispatcherConfig>,
  parentLog: Logger,
  deps: DispatcherDeps = {},
): Dispatcher {
  const log = parentLog.child({ dispatcher: config.id });
  const client = deps.client ?? connectLeaseClient(config.controlPlaneUrl, config.id);
  const executor =
    deps.executor ??
    new HttpExecutor({
      connectTimeoutMs: config.connectTimeoutMs,
      firstByteTimeoutMs: config.firstByteTimeoutMs,
      totalTimeoutMs: config.totalTimeoutMs,
      maxResponseBytes: config.maxResponseBytes,
      // undici queues requests beyond the pool size, and that wait eats into
      // the first-byte timeout: never fewer connections than leases held.
      connectionsPerOrigin: Math.max(256, config.capacity),
    });
  const counts = {
    acquired: 0,
    completions: 0,
    failures: 0,
    releases: 0,
    lost: 0,
    fenced: 0,
    shutdownAborts: 0,
    dispositions: { recorded: 0, requeued: 0, lost: 0, unreported: 0 },
  };
  let ttlMs = TTL_UNKNOWN_MS;
  const margin = (ttl: number) => fenceMarginMs(ttl, config.fenceMarginMs);
  const table = new LeaseTable(margin, (e) => {
    counts.fenced++;
    log.warn(
      { requestId: e.ref.requestId, model: e.lease.model },
      "lease not renewed in time: request aborted (self-fenced)",
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
  );
  const onLost = (entry: HeldLease, reason: LossReason) => {
    // An attempt already over keeps its report: the control plane judges it
    // (LOST for an expired lease; recorded for a cancelled batch's request).
    if (table.giveUp(entry, "lost", `lease lost: ${reason}`)) {
      counts.lost++;
      const fields = { requestId: entry.ref.requestId, model: entry.lease.model, reason };
      // Expired while still running means the fence came too late: the
      // request may have overlapped with its next grant. Worth a loud line.
      if (reason === "expired")
        log.warn(fields, "lease expired while its request ran (fence margin too small?)");
      else log.info(fields, "lease lost: request aborted");
    }
  };
  const renewer = new Renewer(
    table,
    client,
    () => renewIntervalMs(ttlMs, margin(ttlMs), config.renewIntervalMs),
    config.rpcTimeoutMs,
    onLost,
    log,
  );
  const stopping = new AbortController();

  /** Runs one lease: send, then report, then let go. */
  async function run(entry: HeldLease): Promise<void> {
    let outcome: AttemptOutcome;
    try {
      outcome = await executor.execute(entry.lease.request, entry.signal);
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
    table.toReporting(entry);
    let report: Report;
    if (entry.gaveUp !== undefined && outcome.kind === "failure") {
      // Our own abort: no outcome, the request goes back (or ends with its batch).
      report = {
        ref: entry.ref,
        kind: "release",
        reason: `${entry.gaveUp.reason}: ${entry.gaveUp.detail}`,
      };
      counts.releases++;
    } else {
      // A response that made it in before the abort is still reported.
      report = { ref: entry.ref, kind: "outcome", outcome };
      if (outcome.kind === "completion") counts.completions++;
      else counts.failures++;
    }
    const disposition = await reporter.submit(report);
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

  function hold(lease: DispatchLease, receivedAt: number): void {
    counts.acquired++;
    if (lease.ttlMs > 0 && lease.ttlMs !== ttlMs) {
      ttlMs = lease.ttlMs;
      if (config.fenceMarginMs !== undefined && config.fenceMarginMs > margin(ttlMs)) {
        log.warn(
          { ttlMs, configuredMs: config.fenceMarginMs, marginMs: margin(ttlMs) },
          "fence margin capped at half the lease TTL",
        );
      }
    }
    const entry = table.add(lease, receivedAt);
    if (stopping.signal.aborted) {
      table.giveUp(entry, "shutdown", "granted while shutting down");
      counts.shutdownAborts++;
    }
    void run(entry);
  }

  async function acquireLoop(): Promise<void> {
    const backoff = new Backoff();
    const signal = stopping.signal;
    while (!signal.aborted) {
      if (reporter.failing) {
        await reporter.changed(signal, 1000);
        continue;
      }
      const free = config.capacity - table.size;
      if (free <= 0) {
        await table.changed(signal);
        continue;
      }
      let leases: DispatchLease[];
      try {
        leases = await client.acquire({
          max: free,
          models: config.models,
          waitMs: config.acquireWaitMs,
          signal,
        });
      } catch (e) {
        if (signal.aborted) break;
        const wait = backoff.next();
        if (backoff.failures === 1 || backoff.failures % 10 === 0) {
          log.warn(
            { err: e, failures: backoff.failures, retryInMs: wait },
            "could not acquire leases; retrying",
          );
        }
        await sleep(wait, signal);
        continue;
      }
      if (backoff.failures > 0) log.info("the control plane answers again");
      backoff.reset();
      const receivedAt = performance.now();
      for (const l of leases) hold(l, receivedAt);
      if (leases.length > 0) renewer.nudge();
    }
  }

  renewer.start();
  const acquiring = acquireLoop();
  log.info(
    { controlPlane: config.controlPlaneUrl, capacity: config.capacity, models: config.models },
    "dispatcher started",
  );

  let stopped: Promise<void> | undefined;
  async function shutdown(graceMs: number): Promise<void> {
    log.info({ graceMs, running: table.running().length }, "dispatcher stopping");
    stopping.abort();
    await acquiring;
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
        "stopping with unreported outcomes; their leases will expire",
      );
    }
    reporter.stop();
    await renewer.stop();
    // Let run() see its report dropped and let go of the lease.
    while (table.size > 0) await table.changed(undefined, 100);
    client.close();
    await executor.close();
    log.info(stats(), "dispatcher stopped");
  }

  function stats(): DispatcherStats {
    return {
      held: table.size,
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
    stop(graceMs = config.shutdownGraceMs) {
      stopped ??= shutdown(graceMs);
      return stopped;
    },
  };
}
