/**
 * Model routes (docs/openai-api.md): where each model's requests go when a
 * file is uploaded without an endpoint: tenant, model ('*': every model
 * without a route of its own), endpoint, and whether a key is sent (never the
 * key). Admins only, as the API. An admin may set a route and delete one
 * (after a confirmation).
 */
import type { ModelRoute } from "../../src/gen/fusillade/v1/admin_service_pb.js";
import { admin, Code, ConnectError, describe } from "./api.js";
import { conn, date, main } from "./common.js";
import { confirmDialog } from "./dialog.js";
import { h, put, when } from "./dom.js";

/** The operator's routes (empty tenant) apply to every tenant without its own. */
const tenantText = (t: string) => (t === "" ? "all tenants" : t);

function routeRow(r: ModelRoute, reload: () => Promise<void>): HTMLElement {
  const name = `${r.model}${r.tenant === "" ? "" : ` (${r.tenant})`}`;
  return h(
    "tr",
    { "data-route": r.model, "data-tenant": r.tenant },
    h("td", {}, tenantText(r.tenant)),
    h(
      "td",
      { class: "mono" },
      r.model,
      r.model === "*" ? h("small", {}, " default: every other model") : null,
    ),
    h("td", { class: "mono" }, r.endpoint),
    h("td", { class: "key" }, r.hasApiKey ? "set" : "none"),
    h("td", {}, when(date(r.updateTime))),
    h(
      "td",
      {},
      h(
        "button",
        {
          class: "danger",
          onclick: async () => {
            const yes = await confirmDialog(
              `Delete the route of ${name} to ${r.endpoint}${r.hasApiKey ? " and its stored key" : ""}? Files uploaded without an endpoint will no longer find it; stored files and running batches keep theirs.`,
              "Delete route",
            );
            if (!yes) return;
            try {
              await admin.deleteRoute({ tenant: r.tenant, model: r.model });
              conn.textContent = `route of ${name} deleted`;
              await reload();
            } catch (e) {
              conn.textContent = describe(e);
            }
          },
        },
        "Delete…",
      ),
    ),
  );
}

/** The form that sets a route (replacing the route and its key). */
function routeForm(reload: () => Promise<void>): HTMLElement {
  const field = (name: string, attrs: Record<string, string>) =>
    h("input", { name, autocomplete: "off", ...attrs });
  const model = field("model", { placeholder: "model, or *", required: "" });
  const endpoint = field("endpoint", { placeholder: "https://api.example.com", size: "32" });
  const key = field("api_key", { type: "password", placeholder: "API key (optional)" });
  const tenant = field("tenant", { placeholder: "tenant (empty: all)" });
  const set = async () => {
    try {
      const { route } = await admin.setRoute({
        model: model.value.trim(),
        endpoint: endpoint.value.trim(),
        apiKey: key.value,
        tenant: tenant.value.trim(),
      });
      key.value = "";
      conn.textContent = `route of ${route?.model} set`;
      await reload();
    } catch (e) {
      conn.textContent = describe(e);
    }
  };
  return h(
    "div",
    { class: "route-form" },
    model,
    endpoint,
    key,
    tenant,
    h("button", { id: "set-route", onclick: () => void set() }, "Set route"),
  );
}

export function routesView(): () => void {
  const note = h("p", { class: "note" });
  const body = h("tbody");
  const form = h("div");
  put(
    main,
    h("h2", {}, "Routes"),
    note,
    h(
      "table",
      { class: "routes" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["tenant", "model", "endpoint", "API key", "updated", ""].map((t) => h("th", {}, t)),
        ),
      ),
      body,
    ),
    form,
  );
  let stopped = false;
  const reload = async () => {
    try {
      const { routes } = await admin.listRoutes({});
      if (stopped) return;
      conn.textContent = "";
      note.textContent =
        "Where a model's requests go when a file is uploaded without an endpoint: a tenant's own route first, then the route for all tenants; * stands for every model without a route of its own.";
      put(
        body,
        ...(routes.length === 0
          ? [h("tr", {}, h("td", { colspan: 6 }, "no routes: files must name their endpoint"))]
          : routes.map((r) => routeRow(r, reload))),
      );
      if (form.childElementCount === 0) put(form, routeForm(reload));
    } catch (e) {
      if (ConnectError.from(e).code !== Code.PermissionDenied) {
        conn.textContent = describe(e);
        return;
      }
      note.textContent = "Routes are for admins only: this token is not an admin's.";
      note.classList.add("denied");
      put(body);
      put(form);
    }
  };
  void reload();
  return () => {
    stopped = true;
  };
}
