/**
 * Small line charts in plain SVG (a chart library would weigh more than the
 * whole page): time on x, from the first sample kept (at most WINDOW_MS ago,
 * at least MIN_SPAN_MS) to now; one polyline per series; the top of the y
 * axis and each series' last value written out.
 */
import { duration, h } from "./dom.js";
import { type Point, WINDOW_MS } from "./history.js";

const SVG = "http://www.w3.org/2000/svg";
const W = 260;
const H = 64;
/** A page opened seconds ago still draws its first samples across the chart. */
const MIN_SPAN_MS = 10_000;

export interface Series {
  name: string;
  /** Colour class (.s-ok, .s-run, .s-queue, .s-lat). */
  cls: string;
  points: Point[];
}

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number>,
): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** A rounded-up top for the y axis: 1, 2, 5, 10, 20, 50… */
function niceMax(v: number): number {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v) ?? 10 * p;
}

/**
 * A chart titled `title` of `series` over the last minutes; `format` writes a
 * value with its unit. `floor` is the least top of the y axis (e.g. the limit).
 */
export function lineChart(
  title: string,
  series: Series[],
  format: (v: number) => string,
  { floor = 0, now = Date.now() }: { floor?: number; now?: number } = {},
): HTMLElement {
  const top = niceMax(Math.max(floor, ...series.flatMap((s) => s.points.map(([, v]) => v))));
  const first = Math.min(now, ...series.map((s) => s.points[0]?.[0] ?? now));
  const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - first));
  const x = (t: number) => (W * (t - (now - span))) / span;
  const y = (v: number) => H - 2 - ((H - 4) * v) / top;
  const plot = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    width: W,
    height: H,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  plot.append(svg("line", { x1: 0, x2: W, y1: y(0), y2: y(0), class: "axis" }));
  if (floor > 0)
    plot.append(svg("line", { x1: 0, x2: W, y1: y(floor), y2: y(floor), class: "limit" }));
  for (const s of series) {
    if (s.points.length === 0) continue;
    const pts = s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    // One sample draws as a dot.
    if (pts.length === 1) pts.push(pts[0]!.replace(/^[\d.]+/, (a) => String(Number(a) - 2)));
    plot.append(
      svg("polyline", { points: pts.join(" "), class: `line ${s.cls}`, "data-series": s.name }),
    );
  }
  const empty = series.every((s) => s.points.length === 0);
  return h(
    "figure",
    { class: "chart-box", "data-chart": title },
    h("figcaption", {}, title, h("small", {}, ` · top ${format(top)} · last ${duration(span)}`)),
    plot,
    h(
      "div",
      { class: "legend" },
      ...(empty
        ? ["no samples yet"]
        : series.map((s) => {
            const last = s.points[s.points.length - 1];
            return h(
              "span",
              { class: `key ${s.cls}`, "data-last": s.name },
              `${s.name} ${last === undefined ? "–" : format(last[1])}`,
            );
          })),
    ),
  );
}
