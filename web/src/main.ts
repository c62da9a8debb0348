/**
 * The dashboard: batches (live progress, rate, ETA, filter by state), one
 * batch (live counters from WatchBatch, per-model in flight against the
 * limit, failed requests and one request's attempts, cancel and retry), and
 * models (limits, editable by an admin; in flight; holds). Routes are the
 * URL hash: #/, #/batch/ID, #/models.
 */
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import type {
  Batch,
  BatchRequest,
  RequestCounts,
} from "../../src/gen/fusillade/v1/resources_pb.js";
import { BatchState, RequestState } from "../../src/gen/fusillade/v1/resources_pb.js";
import { admin, batches, Code, ConnectError, describe, onNeedToken, setToken } from "./api.js";
import { duration, h, put, when } from "./dom.js";
import "./style.css";

const main = document.getElementById("main")!;
const conn = document.getElementById("conn")!;
const tokenForm = document.getElementById("token-form") as HTMLFormElement;
const tokenInput = document.getElementById("token") as HTMLInputElement;

/** How often lists are read again (the selected batch streams instead). */
const REFRESH_MS = 1000;

onNeedToken(() => {
  tokenForm.hidden = false;
  tokenInput.focus();
});
tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(tokenInput.value.trim());
  tokenInput.value = "";
  tokenForm.hidden = true;
  route();
});

const date = (t: Timestamp | undefined) => (t === undefined ? undefined : timestampDate(t));
const n = (x: bigint | undefined) => Number(x ?? 0n);

const BATCH_STATES: Record<number, string> = {
  [BatchState.IN_PROGRESS]: "in_progress",
  [BatchState.COMPLETED]: "completed",
  [BatchState.CANCELLING]: "cancelling",
  [BatchState.CANCELLED]: "cancelled",
  [BatchState.EXPIRED]: "expired",
};
const stateName = (b: Batch) => BATCH_STATES[b.state] ?? "unknown";
const REQUEST_STATES: Record<number, string> = {
  [RequestState.PENDING]: "pending",
  [RequestState.LEASED]: "running",
  [RequestState.COMPLETED]: "completed",
  [RequestState.FAILED]: "failed",
  [RequestState.CANCELED]: "canceled",
  [RequestState.EXPIRED]: "expired",
};

/** Finished requests of a batch (any terminal state). */
function done(c: RequestCounts | undefined): number {
  return n(c?.completed) + n(c?.failed) + n(c?.canceled) + n(c?.expired);
}

/** Per batch: recent (time, done) samples, for the rate and the ETA. */
const samples = new Map<string, Array<[number, number]>>();
function rate(b: Batch): { perSec: number; etaMs: number } {
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
function progress(b: Batch): HTMLElement {
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
    { class: "progress", title: countsText(c) },
    h(
      "div",
      { class: "bar" },
      seg("completed", n(c?.completed)),
      seg("failed", n(c?.failed)),
      seg("canceled", n(c?.canceled) + n(c?.expired)),
      seg("running", n(c?.inProgress)),
    ),
    h("span", { class: "pct", "data-pct": pct }, `${pct}%`),
  );
}

/** The error of a failed request, and the first bytes of the upstream's answer. */
function errorExcerpt(r: BatchRequest): string {
  const body = (r.response?.body ?? "").replace(/\s+/g, " ").slice(0, 160);
  return `${r.error?.code ?? ""}: ${(r.error?.message ?? "").slice(0, 200)}${body ? ` — ${body}` : ""}`;
}

function countsText(c: RequestCounts | undefined): string {
  return `${n(c?.completed)} ok · ${n(c?.failed)} failed · ${n(c?.inProgress)} running · ${n(c?.pending)} pending${n(c?.canceled) ? ` · ${n(c?.canceled)} canceled` : ""}${n(c?.expired) ? ` · ${n(c?.expired)} expired` : ""}`;
}

// ---------------------------------------------------------------------------

let stopView: () => void = () => undefined;

/** Runs `tick` now and every REFRESH_MS until the view changes. */
function every(tick: () => Promise<void>): () => void {
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

function route(): void {
  stopView();
  const hash = window.location.hash;
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.remove("active");
  const batch = /^#\/batch\/([0-9a-f-]+)$/.exec(hash);
  if (batch) stopView = batchView(batch[1]!);
  else if (hash === "#/models") {
    document.querySelector('[data-nav="models"]')?.classList.add("active");
    stopView = modelsView();
  } else {
    document.querySelector('[data-nav="batches"]')?.classList.add("active");
    stopView = batchesView();
  }
}
window.addEventListener("hashchange", route);

// --- batches ---------------------------------------------------------------

let stateFilter = "";
const fileNames = new Map<string, string>();

function batchesView(): () => void {
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

// --- one batch -------------------------------------------------------------

function batchView(id: string): () => void {
  const head = h("div", { class: "batch-head" });
  const counters = h("div", { class: "counters" });
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
      ),
    );
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

// --- models ----------------------------------------------------------------

function modelsView(): () => void {
  const body = h("tbody");
  const note = h("p", { class: "note" });
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
          ...["model", "limit", "in flight", "slots granted", "pending", "hold", ""].map((t) =>
            h("th", {}, t),
          ),
        ),
      ),
      body,
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
      note.textContent = "Model limits are for admins: this token is not one.";
      put(body);
      return;
    }
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
          h(
            "td",
            {},
            h("meter", { min: 0, max: Math.max(1, l.limit), value: l.inFlight }),
            ` ${l.inFlight}`,
          ),
          h("td", {}, l.slotsGranted),
          h("td", {}, n(l.pending)),
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

route();
