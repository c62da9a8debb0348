/**
 * What the charts draw: samples of the last minutes, kept in this page's
 * memory from when it was opened (the API keeps no history): each batch's
 * requests finished per second, and each model's running requests and
 * upstream latency.
 */
import type { Batch, ModelLimit } from "../../src/gen/fusillade/v1/resources_pb.js";
import { authHeader } from "./api.js";
import { done } from "./common.js";

/** How far back the charts look. */
export const WINDOW_MS = 5 * 60_000;
/** Throughput is averaged over this much time: one-second samples of a batch are jumpy. */
const RATE_SPAN_MS = 5_000;
/** /metrics is read at most this often (in `serve` it asks the dispatcher thread too). */
const METRICS_EVERY_MS = 3_000;

export type Point = [t: number, v: number];

/** Samples of one quantity, the last WINDOW_MS of them. */
export class Track {
  readonly points: Point[] = [];
  add(t: number, v: number): void {
    this.points.push([t, v]);
    while (this.points.length > 0 && t - this.points[0]![0] > WINDOW_MS) this.points.shift();
  }
}

function track(map: Map<string, Track>, key: string): Track {
  const t = map.get(key) ?? new Track();
  map.set(key, t);
  return t;
}

const finished = new Map<string, Track>();
const throughputs = new Map<string, Track>();
const runnings = new Map<string, Track>();
const latencies = new Map<string, Track>();

/** Records how many of a batch's requests have finished now. */
export function recordBatch(b: Batch, now = Date.now()): void {
  const f = track(finished, b.id);
  const last = f.points[f.points.length - 1];
  if (last !== undefined && now - last[0] < 1000) return;
  const d = done(b.counts);
  f.add(now, d);
  // The rate over the last RATE_SPAN_MS (or since the first sample).
  const from = f.points.find(([t]) => now - t <= RATE_SPAN_MS) ?? f.points[0]!;
  if (now > from[0]) track(throughputs, b.id).add(now, ((d - from[1]) * 1000) / (now - from[0]));
}

/** Records each model's running requests now. */
export function recordModels(limits: ModelLimit[], now = Date.now()): void {
  for (const l of limits) track(runnings, l.model).add(now, l.running);
}

/** A batch's requests finished per second, over the last minutes. */
export const throughputOf = (id: string) => throughputs.get(id)?.points ?? [];
/** A model's running requests, over the last minutes. */
export const runningOf = (model: string) => runnings.get(model)?.points ?? [];
/** A model's mean upstream latency (ms) per interval, over the last minutes. */
export const latencyOf = (model: string) => latencies.get(model)?.points ?? [];

/** Sums of the latency histogram per model at the last read of /metrics. */
let lastSums: Map<string, { sum: number; count: number }> | undefined;
let lastRead = 0;
/** Whether /metrics has the dispatchers' latency (false: refused, or none there). */
export let latencyKnown: boolean | undefined;

const LATENCY =
  /^fusillade_dispatcher_upstream_latency_seconds_(sum|count)\{(?:[^}]*,)?model="((?:[^"\\]|\\.)*)"[^}]*\} (\S+)$/;

/** The latency histogram's sum and count per model, from Prometheus text. */
export function latencySums(text: string): Map<string, { sum: number; count: number }> {
  const sums = new Map<string, { sum: number; count: number }>();
  for (const line of text.split("\n")) {
    const m = LATENCY.exec(line);
    if (m === null) continue;
    const model = m[2]!.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    const s = sums.get(model) ?? { sum: 0, count: 0 };
    s[m[1] as "sum" | "count"] += Number(m[3]);
    sums.set(model, s);
  }
  return sums;
}

/**
 * Reads the dispatchers' latency histogram from this origin's /metrics (an
 * admin's, or local mode's: the API's own rule) and records each model's mean
 * latency since the last read. In `serve` the dispatcher thread's metrics are
 * there; a fleet's dispatchers serve theirs on their own ports, so there is
 * none to show here.
 */
export async function recordLatency(now = Date.now()): Promise<void> {
  if (now - lastRead < METRICS_EVERY_MS) return;
  lastRead = now;
  const res = await fetch("/metrics", { headers: authHeader() });
  if (!res.ok) {
    latencyKnown = false;
    return;
  }
  const sums = latencySums(await res.text());
  if (sums.size > 0) latencyKnown = true;
  for (const [model, s] of sums) {
    const before = lastSums?.get(model);
    if (before !== undefined && s.count > before.count) {
      track(latencies, model).add(now, ((s.sum - before.sum) * 1000) / (s.count - before.count));
    }
  }
  lastSums = sums;
}
