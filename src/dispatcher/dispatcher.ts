/**
 * A dispatcher: holds slot grants of models and a buffer of claimed requests
 * (docs/capacity-leases.md), sends each request upstream as soon as a slot of
 * its model is free, and reports the outcomes in batches, whose answers bring
 * the next claims. It keeps no durable state: whatever it loses, the control
 * plane gets back when the grants and claims expire.
 *
 * `startDispatcher` only wires the parts; each owns its state (docs/dispatcher.md):
 * - book (./model-slots.ts): per model, the grant, the buffer, the running
 *   count, the 429 hold and the model's gate (./model-gate.ts, where pacing plugs in);
 * - table (./lease-table.ts): every claim with its own fence timer;
 * - fencing (./fencing.ts): the margin and renewal period, from the lease TTL;
 * - intake (./claim-intake.ts): what each call asks for, and the claims it brings;
 * - runner (./attempt-runner.ts): start, send and end attempts while slots are free;
 * - settler (./settler.ts): every claim's report, then letting go of it;
 * - fencer (./fencer.ts): grants and claims fenced or lost;
 * - reporter (./reporter.ts): outcomes batched into ReportResults calls;
 * - sync (./sync-loop.ts): Sync (renew, hand back, grow, claim) and WaitForWork;
 * - shutdown (./shutdown.ts): the stop switch and the order of a stop.
 *
 * Modes: running → draining (stop(): nothing new starts, buffered claims go
 * back unsent; running requests get `graceMs` to finish) → releasing (the rest
 * are aborted and released; reports flushed for up to `shutdownFlushMs`; the
 * slots handed back) → stopped. While reports fail, nothing new starts.
 */
import type { DispatcherConfig } from "../config/dispatcher-config.js";
import { HttpExecutor } from "../http/executor.js";
import type { Logger } from "../logger.js";
import { DispatcherMetrics } from "../metrics/dispatcher-metrics.js";
import { AttemptRunner } from "./attempt-runner.js";
import { ClaimIntake } from "./claim-intake.js";
import { Fencer } from "./fencer.js";
import { FencePolicy } from "./fencing.js";
import { connectLeaseClient, type Disposition, type LeaseClient } from "./lease-client.js";
import { LeaseTable } from "./lease-table.js";
import type { GateFactory } from "./model-gate.js";
import { SlotBook } from "./model-slots.js";
import { pacedGates } from "./pacing/paced-gate.js";
import { Reporter } from "./reporter.js";
import { Settler } from "./settler.js";
import { Shutdown } from "./shutdown.js";
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
  /** Each model's gate (./model-gate.ts); default: a pacer per model (./pacing/, docs/pacing.md). */
  gateFor?: GateFactory;
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

/** Starts a dispatcher with `config`; it runs until `stop()`. */
export function startDispatcher(
  config: Readonly<DispatcherConfig>,
  parentLog: Logger,
  deps: DispatcherDeps = {},
): Dispatcher {
  const log = parentLog.child({ dispatcher: config.id });
  const client = deps.client ?? defaultClient(config);
  const executor = deps.executor ?? defaultExecutor(config);
  const metrics = deps.metrics ?? new DispatcherMetrics();
  const stopping = new AbortController();
  const fencing = new FencePolicy(config.fenceMarginMs, config.renewIntervalMs);
  const book = new SlotBook(config.capacity, config.prefetch, deps.gateFor ?? pacedGates);
  // Declared in dependency order; the callbacks that point forward (to the
  // fencer, the reporter, the sync loop) run only once sync.start() has run.
  const table = new LeaseTable(fencing.margin, (e) => fencer.claimFenced(e));
  const shared = { book, table, metrics, log };
  const reports = { submit: (...a: Parameters<Reporter["submit"]>) => reporter.submit(...a) };
  const settler = new Settler(shared, reports, fencing.margin);
  const fencer = new Fencer(shared, settler);
  const poke = () => sync.poke();
  const paused = () => stopping.signal.aborted || reporter.failing;
  const runner = new AttemptRunner(shared, settler, executor, { paused, afterAttempt: poke });
  const intake = new ClaimIntake(shared, fencing, settler, runner, stopping.signal, poke);
  const reporter: Reporter = new Reporter(client, reporterOptions(config), log, intake);
  const sync = new SyncLoop(
    { book, table, claims: intake, losses: fencer, fencing, runner, metrics },
    client,
    { models: config.models, waitMs: config.acquireWaitMs, rpcTimeoutMs: config.rpcTimeoutMs },
    log,
  );
  const close = async () => {
    client.close();
    await executor.close();
    log.info(stats(), "dispatcher stopped");
  };
  const parts = { settler, sync, reporter, runner, close };
  const shutdown = new Shutdown(stopping, shared, parts, config.shutdownFlushMs);
  const stats = (): DispatcherStats => ({
    held: table.size,
    slots: book.grantedSlots(),
    running: table.running().length,
    reportsPending: reporter.pending,
    reportsFailing: reporter.failing,
    ...intake.counts,
    ...runner.counts,
    ...fencer.counts,
    ...shutdown.counts,
    releases: settler.counts.releases,
    dispositions: { ...settler.counts.dispositions },
  });
  metrics.bind({
    models: () => book.gauges(),
    reportsPending: () => reporter.pending,
    reportsFailing: () => reporter.failing,
  });
  sync.start();
  const { controlPlaneUrl: controlPlane, capacity, prefetch, models } = config;
  log.info({ controlPlane, capacity, prefetch, models }, "dispatcher started");
  return {
    id: config.id,
    stats,
    metrics: () => metrics.text(),
    stop: (graceMs = config.shutdownGraceMs) => shutdown.stop(graceMs),
  };
}

/** The control plane's client for `config`. */
function defaultClient(config: Readonly<DispatcherConfig>): LeaseClient {
  return connectLeaseClient(config.controlPlaneUrl, config.id, config.token, { ca: config.ca });
}

/** The upstream executor for `config`. */
function defaultExecutor(config: Readonly<DispatcherConfig>): HttpExecutor {
  return new HttpExecutor({
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
}

function reporterOptions(config: Readonly<DispatcherConfig>) {
  return {
    batchSize: config.reportBatchSize,
    maxBytes: config.reportMaxBytes,
    lingerMs: config.reportLingerMs,
    rpcTimeoutMs: config.rpcTimeoutMs,
  };
}
