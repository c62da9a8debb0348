/**
 * `fusillade limits list` and `limits set`: per-model limits, rates and what
 * runs now. A line or a column is a small function of a model's view, so a
 * figure is added in one place.
 */
import type { ModelLimit } from "../../gen/fusillade/v1/resources_pb.js";
import { collect, type Globals, moreNote } from "./actions.js";
import { CliError, type Connection } from "./connection.js";
import { limitView, print, printJson, table } from "./views.js";

type LimitView = ReturnType<typeof limitView>;

const perMinute = (n: number | null) => (n === null ? "" : `${n.toLocaleString("en-US")}/min`);

/**
 * The `limits list` columns: what runs against the limit, then what waits
 * (pending, and claims buffered at a dispatcher for a slot).
 */
const LIMIT_COLUMNS: ReadonlyArray<[string, (l: LimitView) => string]> = [
  ["MODEL", (l) => l.model],
  ["LIMIT", (l) => `${l.limit}${l.is_default ? " (default)" : ""}`],
  ["RUNNING", (l) => String(l.running)],
  ["QUEUED", (l) => String(l.queued)],
  ["RPM", (l) => perMinute(l.rpm)],
  ["TPM", (l) => perMinute(l.tpm)],
  ["HELD UNTIL", (l) => l.hold_until_time ?? ""],
];

/** The `limits list` table. */
export function limitsTable(limits: ModelLimit[]): string {
  const views = limits.map(limitView);
  return table(
    LIMIT_COLUMNS.map(([h]) => h),
    views.map((l) => LIMIT_COLUMNS.map(([, cell]) => cell(l))),
  );
}

/** "gpt-a: limit 10 (default), 600 requests/min, 8 running, 40 queued". */
export function limitLine(l: LimitView): string {
  const parts = [
    `limit ${l.limit}${l.is_default ? " (default)" : ""}`,
    l.rpm === null ? "" : `${l.rpm} requests/min`,
    l.tpm === null ? "" : `${l.tpm} tokens/min`,
    `${l.running} running`,
    `${l.queued} queued`,
  ];
  return `${l.model}: ${parts.filter((p) => p !== "").join(", ")}`;
}

export async function limitsListAction(
  conn: Connection,
  g: Globals,
  o: { limit: number; pageToken: string },
): Promise<void> {
  let defaultLimit = 0;
  const { items, next } = await collect(o.limit, o.pageToken, async (pageSize, pageToken) => {
    const r = await conn.admin.listModelLimits({ pageSize, pageToken });
    defaultLimit = r.defaultLimit;
    return { items: r.modelLimits, next: r.nextPageToken };
  });
  if (g.json)
    return printJson({
      default_limit: defaultLimit,
      model_limits: items.map(limitView),
      next_page_token: next,
    });
  print(limitsTable(items));
  print(`default limit: ${defaultLimit}`);
  moreNote(next, "limits list");
}

/** What `limits set` changes: each field undefined is left as it is. */
export interface LimitsChange {
  limit?: number | "default" | undefined;
  rpm?: number | "none" | undefined;
  tpm?: number | "none" | undefined;
}

export async function limitsSetAction(
  conn: Connection,
  g: Globals,
  model: string,
  change: LimitsChange,
): Promise<void> {
  const { limit, rpm, tpm } = change;
  if (limit === undefined && rpm === undefined && tpm === undefined) {
    throw new CliError("limits set: give a limit, --rpm or --tpm", 2);
  }
  const res = await conn.admin.setModelLimit({
    model,
    keepLimit: limit === undefined,
    clearLimit: limit === "default",
    limit: typeof limit === "number" ? limit : 0,
    clearRpm: rpm === "none",
    rpm: typeof rpm === "number" ? rpm : undefined,
    clearTpm: tpm === "none",
    tpm: typeof tpm === "number" ? tpm : undefined,
  });
  const l = limitView(res.modelLimit!);
  if (g.json) return printJson(l);
  print(limitLine(l));
}
