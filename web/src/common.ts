/** What the dashboard's views share: formatting of batches and counts, the refresh loop. */
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import type {
  Batch,
  BatchRequest,
  ModelShare,
  RequestCounts,
} from "../../src/gen/fusillade/v1/resources_pb.js";
import { BatchState, RequestState } from "../../src/gen/fusillade/v1/resources_pb.js";
import { describe } from "./api.js";
import { h } from "./dom.js";
import { runOf } from "./usage.js";

/** Where a view draws, and where errors are told. */
export const main = document.getElementById("main")!;
export const conn = document.getElementById("conn")!;

/** How often lists are read again (the selected batch streams instead). */
const REFRESH_MS = 1000;

/** File names by id, filled by the batches list. */
export const fileNames = new Map<string, string>();

export const date = (t: Timestamp | undefined) => (t === undefined ? undefined : timestampDate(t));
export const n = (x: bigint | undefined) => Number(x ?? 0n);

export const BATCH_STATES: Record<number, string> = {
  [BatchState.IN_PROGRESS]: "in_progress",
  [BatchState.COMPLETED]: "completed",
  [BatchState.CANCELLING]: "cancelling",
  [BatchState.CANCELLED]: "cancelled",
  [BatchState.EXPIRED]: "expired",
};
export const stateName = (b: Batch) => BATCH_STATES[b.state] ?? "unknown";

/**
 * What a batch's badge says: its state, except that a completed batch whose
 * every request failed reads "failed" (red), and one with some failures
 * "completed" in amber ("partial"), so that green means nothing failed.
 */
export function outcome(b: Batch): { label: string; cls: string } {
  const state = stateName(b);
  if (b.state !== BatchState.COMPLETED) return { label: state, cls: state };
  const failed = n(b.counts?.failed) + n(b.counts?.expired);
  if (failed === 0) return { label: state, cls: state };
  if (failed === n(b.counts?.total)) return { label: "failed", cls: "failed" };
  return { label: state, cls: "partial" };
}

/** The badge of a batch (see {@link outcome}). */
export function badge(b: Batch): HTMLElement {
  const o = outcome(b);
  return h("span", { class: `badge ${o.cls}` }, o.label);
}
export const REQUEST_STATES: Record<number, string> = {
  [RequestState.PENDING]: "pending",
  // Claimed by a dispatcher: running, or queued there for a slot.
  [RequestState.LEASED]: "in progress",
  [RequestState.COMPLETED]: "completed",
  [RequestState.FAILED]: "failed",
  // One spelling on every page, the batch state's: the API's request state is CANCELED.
  [RequestState.CANCELED]: "cancelled",
  [RequestState.EXPIRED]: "expired",
};

/** Finished requests of a batch (any terminal state). */
export function done(c: RequestCounts | undefined): number {
  return n(c?.completed) + n(c?.failed) + n(c?.canceled) + n(c?.expired);
}

/** Per batch: recent (time, done) samples, for the rate and the ETA. */
const samples = new Map<string, Array<[number, number]>>();
export function rate(b: Batch): { perSec: number; etaMs: number } {
  const now = performance.now();
  const list = samples.get(b.id) ?? [];
  const d = done(b.counts);
  if (list.length === 0 || list[list.length - 1]![1] !== d) list.push([now, d]);
  while (list.length > 2 && now - list[0]![0] > 10_000) list.shift();
  samples.set(b.id, list);
  const [t0, d0] = list[0]!;
  const perSec = now > t0 && d > d0 ? ((d - d0) * 1000) / (now - t0) : 0;
  const left = n(b.counts?.total) - d;
  return { perSec, etaMs: left === 0 ? 0 : perSec > 0 ? (left / perSec) * 1000 : Number.NaN };
}

/** The progress bar: one segment per state, and the share done. */
export function progress(b: Batch): HTMLElement {
  const c = b.counts;
  const total = Math.max(1, n(c?.total));
  // Widths through the CSSOM: the page's CSP allows no inline style attributes.
  const seg = (cls: string, x: number) => {
    if (x <= 0) return null;
    const el = h("span", { class: `seg ${cls}` });
    el.style.width = `${(100 * x) / total}%`;
    return el;
  };
  const pct = Math.floor((100 * done(c)) / total);
  return h(
    "div",
    { class: "progress", title: countsText(c, b.shares) },
    h(
      "div",
      { class: "bar" },
      seg("completed", n(c?.completed)),
      seg("failed", n(c?.failed)),
      seg("cancelled", n(c?.canceled) + n(c?.expired)),
      seg("running", runOf(c, b.shares).running),
    ),
    h("span", { class: "pct", "data-pct": pct }, `${pct}%`),
  );
}

/** The error of a failed request, and the first bytes of the upstream's answer. */
export function errorExcerpt(r: BatchRequest): string {
  const body = (r.response?.body ?? "").replace(/\s+/g, " ").slice(0, 160);
  return `${r.error?.code ?? ""}: ${(r.error?.message ?? "").slice(0, 200)}${body ? ` — ${body}` : ""}`;
}

/** "38 ok · 2 failed · 4 running · 12 queued", then cancelled and expired when there are any. */
export function countsText(c: RequestCounts | undefined, shares?: ModelShare[]): string {
  const run = runOf(c, shares);
  return `${n(c?.completed)} ok · ${n(c?.failed)} failed · ${run.running} running · ${run.queued} queued${n(c?.canceled) ? ` · ${n(c?.canceled)} cancelled` : ""}${n(c?.expired) ? ` · ${n(c?.expired)} expired` : ""}`;
}

/** Runs `tick` now and every REFRESH_MS until the view changes. */
export function every(tick: () => Promise<void>): () => void {
  let stopped = false;
  let timer: number | undefined;
  const loop = async () => {
    try {
      await tick();
      conn.textContent = "";
    } catch (e) {
      conn.textContent = describe(e);
    }
    if (!stopped) timer = window.setTimeout(loop, REFRESH_MS);
  };
  void loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
