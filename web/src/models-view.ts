/**
 * Models: limits (editable by an admin), running against the limit and
 * queued, slots granted, holds, charts of the last minutes; and the tenants
 * sharing them (weights, claims, unfinished batches). A client token sees the
 * models of its unfinished batches, read-only (BatchService.ListBatchModels),
 * and no tenants.
 */
import { pacingText } from "../../src/domain/pacing-text.js";
import type { ModelLimit } from "../../src/gen/fusillade/v1/resources_pb.js";
import { admin, batches, Code, ConnectError, describe } from "./api.js";
import { chartNotes, modelCharts, wasActive } from "./batch-charts.js";
import { conn, date, every, main } from "./common.js";
import { h, put } from "./dom.js";
import { recordLatency, recordModels } from "./history.js";
import { usageCell, usageOf } from "./usage.js";

const table = (headers: string[], body: HTMLElement) =>
  h("table", {}, h("thead", {}, h("tr", {}, ...headers.map((t) => h("th", {}, t)))), body);

/** The limit: an input and a Set button for an admin, the number for a client. */
function limitCells(l: ModelLimit, editable: boolean): HTMLElement[] {
  const isDefault = l.isDefault ? h("small", {}, " default") : null;
  if (!editable) return [h("td", { class: "limit" }, l.limit, isDefault), h("td")];
  const input = h("input", { type: "number", min: 0, value: l.limit, class: "limit" });
  const set = async () => {
    try {
      await admin.setModelLimit({ model: l.model, limit: Number(input.value) });
      input.blur();
      conn.textContent = `${l.model}: limit ${input.value}`;
    } catch (e) {
      conn.textContent = describe(e);
    }
  };
  return [h("td", {}, input, isDefault), h("td", {}, h("button", { onclick: set }, "Set"))];
}

function modelRow(l: ModelLimit, editable: boolean): HTMLElement {
  const hold = date(l.holdUntilTime);
  const [limit, set] = limitCells(l, editable);
  return h(
    "tr",
    { "data-model": l.model },
    h("td", {}, l.model),
    limit,
    h("td", {}, usageCell(usageOf(l))),
    h("td", {}, l.slotsGranted),
    h("td", { class: "pacing" }, l.pacing ? pacingText(l.pacing) : "–"),
    h("td", {}, hold && hold > new Date() ? `held until ${hold.toLocaleTimeString()}` : "–"),
    set,
  );
}

/** Every model's limit for an admin; for a client, its unfinished batches' models (read-only). */
async function readLimits(): Promise<{
  limits: ModelLimit[];
  defaultLimit: number;
  admin: boolean;
}> {
  try {
    const res = await admin.listModelLimits({ pageSize: 1000 });
    return { limits: res.modelLimits, defaultLimit: res.defaultLimit, admin: true };
  } catch (e) {
    if (ConnectError.from(e).code !== Code.PermissionDenied) throw e;
    const res = await batches.listBatchModels({});
    return { limits: res.modelLimits, defaultLimit: res.defaultLimit, admin: false };
  }
}

export function modelsView(): () => void {
  const body = h("tbody");
  const note = h("p", { class: "note" });
  const tenants = h("tbody");
  const tenantsSection = h(
    "section",
    { hidden: true },
    h("h3", {}, "Tenants"),
    h("p", { class: "note" }, "A busy model's slots are shared between tenants by weight."),
    table(["tenant", "weight", "claims (running or queued)", "unfinished batches"], tenants),
  );
  const charts = h("section", { class: "charts" });
  put(
    main,
    h("h2", {}, "Models"),
    note,
    table(
      ["model", "limit", "running / limit · queued", "slots granted", "pacing", "hold", ""],
      body,
    ),
    h(
      "p",
      { class: "note" },
      "Running: requests holding one of the slots granted (never more than the limit). Queued: requests waiting to run, pending or buffered at a dispatcher for its next free slot. Pacing: why a model runs below its limit (docs/pacing.md): paced by a rate, backing off after 429s, or held until its meter resets; calls answered and 429s over the last minute, and how many may run at once.",
    ),
    h("h3", {}, "Last minutes"),
    charts,
    tenantsSection,
  );
  return every(async () => {
    // Not while an admin is typing a new limit.
    if (document.activeElement?.closest("#main input")) return;
    const res = await readLimits();
    recordModels(res.limits);
    await recordLatency().catch(() => undefined);
    tenantsSection.hidden = !res.admin;
    if (res.admin) {
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
    }
    // Charts of the models that did something while this page was open.
    const active = res.limits.filter((l) => wasActive(l.model));
    put(
      charts,
      active.length === 0
        ? h("p", { class: "note" }, "No model has run anything since this page was opened.")
        : h("div", { class: "chart-row" }, ...active.flatMap((l) => modelCharts(l.model, l.limit))),
      chartNotes(),
    );
    note.textContent = `Models without a limit of their own run at the default, ${res.defaultLimit}.${
      res.admin
        ? ""
        : " Read-only: the models of this token's unfinished batches; limits and tenants are set by an admin."
    }`;
    put(body, ...res.limits.map((l) => modelRow(l, res.admin)));
  });
}
