/**
 * One batch: counters live from WatchBatch, its priority and share of each
 * model while it runs (docs/fair-share.md), per model its requests running,
 * queued and finished by state, and the model's running against the limit,
 * charts of the last minutes, the failed requests and one request's attempts;
 * cancel (confirmed), retry failed, resume.
 */
import type { ModelBreakdown } from "../../src/gen/fusillade/v1/batch_service_pb.js";
import type { Batch, ModelLimit, ModelShare } from "../../src/gen/fusillade/v1/resources_pb.js";
import { RequestState } from "../../src/gen/fusillade/v1/resources_pb.js";
import { batches, Code, ConnectError, describe } from "./api.js";
import { batchActions } from "./batch-actions.js";
import { batchCharts } from "./batch-charts.js";
import {
  badge,
  conn,
  date,
  errorExcerpt,
  every,
  fileNames,
  main,
  n,
  progress,
  REQUEST_STATES,
  rate,
} from "./common.js";
import { duration, h, put, when } from "./dom.js";
import { recordBatch, recordLatency, recordModels } from "./history.js";
import { runOf, shareUsage, usageCell, usageOf } from "./usage.js";

const table = (headers: string[], body: HTMLElement) =>
  h("table", {}, h("thead", {}, h("tr", {}, ...headers.map((t) => h("th", {}, t)))), body);

/**
 * A running batch's share of a model: its running requests beside the
 * model's, the model's running against the limit, the batches sharing it.
 */
function shareRow(s: ModelShare): HTMLElement {
  return h(
    "tr",
    { "data-share": s.model },
    h("td", {}, s.model),
    h(
      "td",
      { class: "inflight" },
      h("meter", { min: 0, max: Math.max(1, s.modelRunning), value: s.running }),
      ` ${s.running} of ${s.modelRunning}`,
    ),
    h("td", {}, usageCell(shareUsage(s))),
    h("td", {}, s.activeBatches),
  );
}

/**
 * A model's row: this batch's requests running, queued and finished by
 * state, and the model's running against its limit (all batches).
 */
function modelRow(m: ModelBreakdown, share: ModelShare | undefined, l: ModelLimit | undefined) {
  const c = m.counts;
  const run = runOf(c, share === undefined ? undefined : [share]);
  const hold = date(m.holdUntilTime);
  return h(
    "tr",
    { "data-model": m.model },
    h("td", {}, m.model),
    ...[run.running, run.queued, ...[c?.completed, c?.failed, c?.canceled, c?.expired].map(n)].map(
      (x) => h("td", { class: "num" }, x),
    ),
    h("td", {}, l === undefined ? "–" : usageCell(usageOf(l))),
    h("td", {}, hold && hold > new Date() ? `held until ${hold.toLocaleTimeString()}` : "–"),
  );
}

export function batchView(id: string): () => void {
  const head = h("div", { class: "batch-head" });
  const counters = h("div", { class: "counters" });
  const shares = h("tbody");
  const sharesSection = h(
    "section",
    { class: "shares", hidden: true },
    h("h3", {}, "Share of each model"),
    h(
      "p",
      { class: "note" },
      "Running: requests holding one of the slots granted for the model, never more than its limit; requests buffered at a dispatcher for a free slot are queued.",
    ),
    table(["model", "this batch running", "model running / limit", "batches sharing"], shares),
  );
  const models = h("tbody");
  const charts = h("section", { class: "charts" });
  const failed = h("tbody");
  const attempts = h("div", { class: "attempts" });
  let current: Batch | undefined;
  const actions = batchActions(id, () => watch());
  put(
    main,
    h("p", {}, h("a", { href: "#/" }, "← batches")),
    head,
    counters,
    actions.el,
    sharesSection,
    h("h3", {}, "Models"),
    table(
      [
        "model",
        "running",
        "queued",
        "completed",
        "failed",
        "cancelled",
        "expired",
        "model now (all batches)",
        "hold",
      ],
      models,
    ),
    h("h3", {}, "Last minutes"),
    charts,
    h("h3", {}, "Failed requests"),
    table(["line", "custom id", "model", "status", "error"], failed),
    attempts,
  );

  const show = (b: Batch) => {
    current = b;
    recordBatch(b);
    actions.update(b);
    const r = rate(b);
    put(
      head,
      h("h2", {}, "Batch ", h("span", { class: "mono", "data-batch-id": b.id }, b.id)),
      h(
        "p",
        {},
        badge(b),
        ` file ${fileNames.get(b.fileId) || b.fileId} · created ${when(date(b.createTime))} · `,
        b.finishTime
          ? `finished ${when(date(b.finishTime))}`
          : `expires ${when(date(b.expireTime))}`,
        b.priority === 0 ? null : h("span", { class: "priority" }, ` · priority ${b.priority}`),
      ),
    );
    // Shares come with the batch while it runs, none once it has finished.
    sharesSection.hidden = b.shares.length === 0;
    put(shares, ...b.shares.map(shareRow));
    const run = runOf(b.counts, b.shares);
    put(
      counters,
      progress(b),
      h(
        "dl",
        {},
        ...(
          [
            ["total", n(b.counts?.total)],
            ["completed", n(b.counts?.completed)],
            ["failed", n(b.counts?.failed)],
            ["running", run.running],
            ["queued", run.queued],
            ["cancelled", n(b.counts?.canceled)],
            ["expired", n(b.counts?.expired)],
            ["rate", r.perSec > 0 ? `${r.perSec.toFixed(1)}/s` : "–"],
            ["ETA", b.finishTime ? "–" : duration(r.etaMs)],
          ] as const
        ).flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-count": k }, v)]),
      ),
    );
  };

  // Live counters: WatchBatch streams the batch now, then on every change,
  // until it finishes; started again when a retry or resume reopens it.
  const abort = new AbortController();
  let watching = false;
  const watch = () => {
    if (watching) return;
    watching = true;
    void (async () => {
      while (!abort.signal.aborted) {
        try {
          for await (const m of batches.watchBatch({ batchId: id }, { signal: abort.signal })) {
            if (m.batch) show(m.batch);
          }
          break; // the stream ends when the batch has finished
        } catch (e) {
          if (abort.signal.aborted) break;
          conn.textContent = describe(e);
          if (ConnectError.from(e).code === Code.NotFound) break;
          await new Promise((r) => setTimeout(r, 2000));
        }
      }
      watching = false;
    })();
  };
  watch();

  const showAttempts = async (requestId: string) => {
    const res = await batches.getRequest({ requestId });
    const r = res.request!;
    put(
      attempts,
      h("h3", {}, `Request ${r.customId || r.id} (line ${r.line})`),
      h(
        "p",
        {},
        `${REQUEST_STATES[r.state] ?? "?"} · ${r.method} ${r.url}`,
        r.error ? ` · ${r.error.code}: ${r.error.message}` : "",
      ),
      table(
        ["attempt", "start", "took", "outcome"],
        h(
          "tbody",
          {},
          ...res.attempts.map((a) => {
            const s = date(a.startTime);
            const e = date(a.endTime);
            return h(
              "tr",
              {},
              h("td", {}, a.attempt),
              h("td", {}, when(s)),
              h("td", {}, s && e ? `${e.getTime() - s.getTime()} ms` : "–"),
              h("td", {}, REQUEST_STATES[a.outcome] ?? "running"),
            );
          }),
        ),
      ),
    );
  };

  const stopTick = every(async () => {
    const [breakdown, limits, fails] = await Promise.all([
      batches.getBatchBreakdown({ batchId: id, maxErrors: 5 }),
      // Read-only, for clients too: the limits and use of this batch's models.
      batches.listBatchModels({ batchId: id }),
      batches.listBatchRequests({ batchId: id, states: [RequestState.FAILED], pageSize: 20 }),
      recordLatency().catch(() => undefined),
    ]);
    const limitOf = new Map(limits.modelLimits.map((l) => [l.model, l]));
    recordModels(limits.modelLimits);
    if (current) recordBatch(current);
    const shareOf = new Map(current?.shares.map((s) => [s.model, s]) ?? []);
    put(
      models,
      ...breakdown.models.map((m) => modelRow(m, shareOf.get(m.model), limitOf.get(m.model))),
    );
    put(
      charts,
      ...batchCharts(
        id,
        breakdown.models.map((m) => m.model),
        limitOf,
      ),
    );
    put(
      failed,
      ...(fails.requests.length === 0
        ? [h("tr", {}, h("td", { colspan: 5 }, "none"))]
        : fails.requests.map((r) =>
            h(
              "tr",
              {
                class: "clickable",
                onclick: () =>
                  void showAttempts(r.id).catch((e) => (conn.textContent = describe(e))),
              },
              h("td", {}, r.line),
              h("td", {}, r.customId),
              h("td", {}, r.model),
              h("td", {}, r.response?.statusCode || "–"),
              h("td", { class: "excerpt" }, errorExcerpt(r)),
            ),
          )),
    );
  });
  return () => {
    abort.abort();
    stopTick();
  };
}
