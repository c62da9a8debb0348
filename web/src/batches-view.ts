/** The batches list: live progress, rate, ETA; a state filter. Read every second. */
import { batches } from "./api.js";
import { BATCH_STATES, date, every, fileNames, main, progress, rate, stateName } from "./common.js";
import { duration, h, put, when } from "./dom.js";

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
    ...Object.values(BATCH_STATES).map((s) =>
      h("option", { value: s, selected: s === stateFilter }, s),
    ),
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
          ...["batch", "file", "state", "progress", "rate", "ETA", "created", "finished"].map((t) =>
            h("th", {}, t),
          ),
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
      .filter((b) => stateFilter === "" || stateName(b) === stateFilter)
      .map((b) => {
        const r = rate(b);
        return h(
          "tr",
          { "data-batch-id": b.id, class: `state-${stateName(b)}` },
          h("td", {}, h("a", { href: `#/batch/${b.id}`, class: "mono" }, b.id.slice(0, 8))),
          h("td", {}, fileNames.get(b.fileId) || b.fileId.slice(0, 8)),
          h("td", {}, h("span", { class: `badge ${stateName(b)}` }, stateName(b))),
          h("td", {}, progress(b)),
          h("td", {}, r.perSec > 0 ? `${r.perSec.toFixed(1)}/s` : "–"),
          h("td", {}, b.finishTime ? "–" : duration(r.etaMs)),
          h("td", {}, when(date(b.createTime))),
          h("td", {}, when(date(b.finishTime))),
        );
      });
    put(body, ...(rows.length > 0 ? rows : [h("tr", {}, h("td", { colspan: 8 }, "no batches"))]));
  };
  return every(tick);
}
