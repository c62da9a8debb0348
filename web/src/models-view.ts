/**
 * Models: limits (editable by an admin), running against the limit and
 * queued, slots granted, holds, charts of the last minutes; and the
 * tenants sharing them (weights, claims, unfinished batches).
 */
import { admin, Code, ConnectError, describe } from "./api.js";
import { chartNotes, modelCharts, wasActive } from "./batch-charts.js";
import { conn, date, every, main } from "./common.js";
import { h, put } from "./dom.js";
import { recordLatency, recordModels } from "./history.js";
import { usageCell, usageOf } from "./usage.js";

export function modelsView(): () => void {
  const body = h("tbody");
  const note = h("p", { class: "note" });
  const tenants = h("tbody");
  const charts = h("section", { class: "charts" });
  put(
    main,
    h("h2", {}, "Models"),
    note,
    h(
      "table",
      {},
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["model", "limit", "running / limit", "slots granted", "pending", "hold", ""].map(
            (t) => h("th", {}, t),
          ),
        ),
      ),
      body,
    ),
    h(
      "p",
      { class: "note" },
      "Running: requests holding one of the slots granted (never more than the limit). Queued: requests waiting to run, pending or buffered at a dispatcher for its next free slot.",
    ),
    h("h3", {}, "Last minutes"),
    charts,
    h("h3", {}, "Tenants"),
    h("p", { class: "note" }, "A busy model's slots are shared between tenants by weight."),
    h(
      "table",
      {},
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["tenant", "weight", "claims (running or queued)", "unfinished batches"].map((t) =>
            h("th", {}, t),
          ),
        ),
      ),
      tenants,
    ),
  );
  return every(async () => {
    // Not while an admin is typing a new limit.
    if (document.activeElement?.closest("#main input")) return;
    let res: Awaited<ReturnType<typeof admin.listModelLimits>>;
    try {
      res = await admin.listModelLimits({ pageSize: 1000 });
    } catch (e) {
      if (ConnectError.from(e).code !== Code.PermissionDenied) throw e;
      note.textContent = "Model limits and tenants are for admins: this token is not one.";
      put(body);
      put(tenants);
      put(charts);
      return;
    }
    recordModels(res.modelLimits);
    await recordLatency().catch(() => undefined);
    const ts = await admin.listTenants({});
    put(
      tenants,
      ...(ts.tenants.length === 0
        ? [h("tr", {}, h("td", { colspan: 4 }, "none"))]
        : ts.tenants.map((t) =>
            h(
              "tr",
              { "data-tenant": t.name },
              h("td", {}, t.name),
              h("td", {}, t.weight, t.isDefault ? h("small", {}, " default") : null),
              h("td", {}, t.inFlight),
              h("td", {}, t.activeBatches),
            ),
          )),
    );
    // Charts of the models that did something while this page was open.
    const active = res.modelLimits.filter((l) => wasActive(l.model));
    put(
      charts,
      active.length === 0
        ? h("p", { class: "note" }, "No model has run anything since this page was opened.")
        : h("div", { class: "chart-row" }, ...active.flatMap((l) => modelCharts(l.model, l.limit))),
      chartNotes(true),
    );
    note.textContent = `Models without a limit of their own run at the default, ${res.defaultLimit}.`;
    put(
      body,
      ...res.modelLimits.map((l) => {
        const input = h("input", { type: "number", min: 0, value: l.limit, class: "limit" });
        const hold = date(l.holdUntilTime);
        return h(
          "tr",
          { "data-model": l.model },
          h("td", {}, l.model),
          h("td", {}, input, l.isDefault ? h("small", {}, " default") : null),
          h("td", {}, usageCell(usageOf(l))),
          h("td", {}, l.slotsGranted),
          h("td", {}, hold && hold > new Date() ? `held until ${hold.toLocaleTimeString()}` : "–"),
          h(
            "td",
            {},
            h(
              "button",
              {
                onclick: async () => {
                  try {
                    await admin.setModelLimit({ model: l.model, limit: Number(input.value) });
                    input.blur();
                    conn.textContent = `${l.model}: limit ${input.value}`;
                  } catch (e) {
                    conn.textContent = describe(e);
                  }
                },
              },
              "Set",
            ),
          ),
        );
      }),
    );
  });
}
