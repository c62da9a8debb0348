/**
 * One batch: counters live from WatchBatch, its priority and share of each
 * model while it runs (docs/fair-share.md), per-model in flight against the
 * limit, the failed requests and one request's attempts; cancel and retry.
 */
import type { Batch, ModelShare } from "../../src/gen/fusillade/v1/resources_pb.js";
import { RequestState } from "../../src/gen/fusillade/v1/resources_pb.js";
import { admin, batches, Code, ConnectError, describe } from "./api.js";
import {
  conn,
  date,
  done,
  errorExcerpt,
  every,
  fileNames,
  main,
  n,
  progress,
  REQUEST_STATES,
  rate,
  stateName,
} from "./common.js";
import { duration, h, put, when } from "./dom.js";

/** A running batch's share of a model: its claims beside every batch's, the limit, the batches sharing it. */
function shareRow(s: ModelShare): HTMLElement {
  return h(
    "tr",
    { "data-share": s.model },
    h("td", {}, s.model),
    h(
      "td",
      { class: "inflight" },
      h("meter", { min: 0, max: Math.max(1, s.modelInFlight), value: s.inFlight }),
      ` ${s.inFlight} of ${s.modelInFlight}`,
    ),
    h("td", {}, `${s.modelInFlight} / ${s.limit}`),
    h("td", {}, s.activeBatches),
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
      "Claims: requests a dispatcher holds, running or buffered for its next free slot (so a model's may pass its limit).",
    ),
    h(
      "table",
      {},
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["model", "this batch", "model in flight / limit", "batches sharing"].map((t) =>
            h("th", {}, t),
          ),
        ),
      ),
      shares,
    ),
  );
  const models = h("tbody");
  const failed = h("tbody");
  const attempts = h("div", { class: "attempts" });
  const actions = h(
    "div",
    { class: "actions" },
    h(
      "button",
      { id: "cancel", onclick: () => void act(() => batches.cancelBatch({ batchId: id })) },
      "Cancel",
    ),
    h(
      "button",
      { id: "retry", onclick: () => void act(() => batches.retryBatch({ batchId: id })) },
      "Retry failed",
    ),
  );
  const act = async (fn: () => Promise<unknown>) => {
    try {
      await fn();
      conn.textContent = "";
    } catch (e) {
      conn.textContent = describe(e);
    }
  };
  put(
    main,
    h("p", {}, h("a", { href: "#/" }, "← batches")),
    head,
    counters,
    actions,
    sharesSection,
    h("h3", {}, "Models"),
    h(
      "table",
      {},
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["model", "in flight / limit", "pending", "done", "failed", "hold"].map((t) =>
            h("th", {}, t),
          ),
        ),
      ),
      models,
    ),
    h("h3", {}, "Failed requests"),
    h(
      "table",
      {},
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["line", "custom id", "model", "status", "error"].map((t) => h("th", {}, t)),
        ),
      ),
      failed,
    ),
    attempts,
  );

  const show = (b: Batch) => {
    const r = rate(b);
    put(
      head,
      h("h2", {}, "Batch ", h("span", { class: "mono", "data-batch-id": b.id }, b.id)),
      h(
        "p",
        {},
        h("span", { class: `badge ${stateName(b)}` }, stateName(b)),
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
            ["running", n(b.counts?.inProgress)],
            ["pending", n(b.counts?.pending)],
            ["canceled", n(b.counts?.canceled)],
            ["expired", n(b.counts?.expired)],
            ["rate", r.perSec > 0 ? `${r.perSec.toFixed(1)}/s` : "–"],
            ["ETA", b.finishTime ? "–" : duration(r.etaMs)],
          ] as const
        ).flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-count": k }, v)]),
      ),
    );
  };

  // Live counters: WatchBatch streams the batch now, then on every change.
  const abort = new AbortController();
  void (async () => {
    while (!abort.signal.aborted) {
      try {
        for await (const m of batches.watchBatch({ batchId: id }, { signal: abort.signal })) {
          if (m.batch) show(m.batch);
        }
        return; // the stream ends when the batch has finished
      } catch (e) {
        if (abort.signal.aborted) return;
        conn.textContent = describe(e);
        if (ConnectError.from(e).code === Code.NotFound) return;
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
  })();

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
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h("tr", {}, ...["attempt", "start", "took", "outcome"].map((t) => h("th", {}, t))),
        ),
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
      admin.listModelLimits({ pageSize: 1000 }).catch((e) => {
        if (ConnectError.from(e).code === Code.PermissionDenied) return undefined;
        throw e;
      }),
      batches.listBatchRequests({ batchId: id, states: [RequestState.FAILED], pageSize: 20 }),
    ]);
    const limitOf = new Map(limits?.modelLimits.map((l) => [l.model, l]) ?? []);
    put(
      models,
      ...breakdown.models.map((m) => {
        const l = limitOf.get(m.model);
        const hold = date(m.holdUntilTime);
        return h(
          "tr",
          { "data-model": m.model },
          h("td", {}, m.model),
          h(
            "td",
            {},
            l === undefined
              ? `${n(m.counts?.inProgress)} running`
              : h(
                  "span",
                  { class: "inflight" },
                  h("meter", { min: 0, max: Math.max(1, l.limit), value: l.inFlight }),
                  ` ${l.inFlight} / ${l.limit}`,
                ),
          ),
          h("td", {}, n(m.counts?.pending)),
          h("td", {}, done(m.counts)),
          h("td", {}, n(m.counts?.failed)),
          h("td", {}, hold && hold > new Date() ? `held until ${hold.toLocaleTimeString()}` : "–"),
        );
      }),
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
