/**
 * The batches list: live progress, failed requests, rate, ETA; a filter by
 * state (and "failed": completed batches whose every request failed). Read
 * every second.
 */
import { batches } from "./api.js";
import {
  BATCH_STATES,
  badge,
  date,
  every,
  fileNames,
  main,
  n,
  outcome,
  progress,
  rate,
  stateName,
} from "./common.js";
import { duration, h, put, when } from "./dom.js";
import { recordBatch } from "./history.js";

/** What the filter offers: the batch states, and the badge of a batch that failed whole. */
const FILTERS = [...Object.values(BATCH_STATES), "failed"];

let stateFilter = "";

export function batchesView(): () => void {
  const filter = h(
    "select",
    {
      id: "state-filter",
      onchange: (e) => {
        stateFilter = (e.target as HTMLSelectElement).value;
        void tick();
      },
    },
    h("option", { value: "" }, "all states"),
    ...FILTERS.map((s) => h("option", { value: s, selected: s === stateFilter }, s)),
  );
  const body = h("tbody");
  put(
    main,
    h("div", { class: "toolbar" }, h("h2", {}, "Batches"), filter),
    h(
      "table",
      { class: "batches" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...[
            "batch",
            "file",
            "state",
            "progress",
            "failed",
            "rate",
            "ETA",
            "created",
            "finished",
          ].map((t) => h("th", {}, t)),
        ),
      ),
      body,
    ),
  );
  const tick = async () => {
    const res = await batches.listBatches({ pageSize: 100 });
    const unknown = res.batches.some((b) => b.fileId !== "" && !fileNames.has(b.fileId));
    if (unknown) {
      const files = await batches.listFiles({ pageSize: 1000 });
      for (const f of files.files) fileNames.set(f.id, f.filename);
    }
    const rows = res.batches
      .filter((b) => stateFilter === "" || outcome(b).label === stateFilter)
      .map((b) => {
        recordBatch(b);
        const r = rate(b);
        const failed = n(b.counts?.failed);
        return h(
          "tr",
          { "data-batch-id": b.id, class: `state-${stateName(b)}` },
          h("td", {}, h("a", { href: `#/batch/${b.id}`, class: "mono" }, b.id.slice(0, 8))),
          h("td", {}, fileNames.get(b.fileId) || b.fileId.slice(0, 8)),
          h("td", {}, badge(b)),
          h("td", {}, progress(b)),
          h("td", { class: failed > 0 ? "num failed" : "num", "data-failed": failed }, failed),
          h("td", {}, r.perSec > 0 ? `${r.perSec.toFixed(1)}/s` : "–"),
          h("td", {}, b.finishTime ? "–" : duration(r.etaMs)),
          h("td", {}, when(date(b.createTime))),
          h("td", {}, when(date(b.finishTime))),
        );
      });
    put(body, ...(rows.length > 0 ? rows : [h("tr", {}, h("td", { colspan: 9 }, "no batches"))]));
  };
  return every(tick);
}
