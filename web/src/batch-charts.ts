/**
 * The charts of one batch and its models over the last minutes: the batch's
 * requests finished per second; per model, its running requests (the limit
 * drawn as a line) and its upstream latency.
 */
import type { ModelLimit } from "../../src/gen/fusillade/v1/resources_pb.js";
import { lineChart } from "./chart.js";
import { h } from "./dom.js";
import { latencyKnown, latencyOf, runningOf, throughputOf } from "./history.js";

const perSec = (v: number) => `${v < 10 ? v.toFixed(1) : Math.round(v)}/s`;
const count = (v: number) => String(Math.round(v));
const ms = (v: number) => (v < 1000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(1)} s`);

/** Whether a model ran anything, or had a latency, in the last minutes. */
export function wasActive(model: string): boolean {
  return latencyOf(model).length > 0 || runningOf(model).some(([, v]) => v > 0);
}

/** A model's two charts: running against its limit, and latency. */
export function modelCharts(model: string, limit: number | undefined): HTMLElement[] {
  const charts = [];
  if (limit !== undefined) {
    charts.push(
      lineChart(
        `${model}: running / ${limit}`,
        [{ name: "running", cls: "s-run", points: runningOf(model) }],
        count,
        { floor: limit },
      ),
    );
  }
  if (latencyKnown) {
    charts.push(
      lineChart(
        `${model}: latency`,
        [{ name: "mean", cls: "s-lat", points: latencyOf(model) }],
        ms,
      ),
    );
  }
  return charts;
}

/** Why a chart is missing, when one is. */
export function chartNotes(): HTMLElement | null {
  return latencyKnown
    ? null
    : h(
        "p",
        { class: "note" },
        "Upstream latency comes from the dispatchers' metrics: this control plane's /metrics has none (a fleet's dispatchers serve theirs on their own ports) or this token may not read it.",
      );
}

/** The charts of batch `id`, whose requests are for `models`. */
export function batchCharts(
  id: string,
  models: string[],
  limitOf: Map<string, ModelLimit>,
): Array<HTMLElement | null> {
  return [
    h(
      "div",
      { class: "chart-row" },
      lineChart("finished", [{ name: "finished", cls: "s-ok", points: throughputOf(id) }], perSec),
      ...models.flatMap((m) => modelCharts(m, limitOf.get(m)?.limit)),
    ),
    chartNotes(),
  ];
}
