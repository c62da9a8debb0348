/**
 * `fusillade requests BATCH` (a batch's requests, filtered by state and
 * model) and `fusillade request ID` (one request with its attempts).
 */
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { REQUEST_STATE_BY_NAME } from "../../client/index.js";
import type { RequestAttempt } from "../../gen/fusillade/v1/batch_service_pb.js";
import { type BatchRequest, RequestState } from "../../gen/fusillade/v1/resources_pb.js";
import { CliError, type Connection } from "./connection.js";
import { formatDuration, print, table } from "./views.js";

/** Request states by the names users type (and the CLI prints): the client library's. */
const REQUEST_STATE_NAMES: Readonly<Record<string, RequestState>> = REQUEST_STATE_BY_NAME;

/** A request state as its CLI name. */
export function requestStateName(s: RequestState): string {
  for (const [name, v] of Object.entries(REQUEST_STATE_NAMES)) if (v === s) return name;
  return "unspecified";
}

/** Parses a --state value (also accepts "canceled", "leased", "running"). */
export function parseRequestState(value: string): RequestState {
  const aliases: Record<string, string> = {
    canceled: "cancelled",
    leased: "in_progress",
    running: "in_progress",
  };
  const s = REQUEST_STATE_NAMES[aliases[value] ?? value];
  if (s === undefined) {
    throw new CliError(
      `--state must be one of ${Object.keys(REQUEST_STATE_NAMES).join(", ")}, got ${JSON.stringify(value)}`,
      2,
    );
  }
  return s;
}

const iso = (t: { seconds: bigint; nanos: number } | undefined) =>
  t ? timestampDate(t as Parameters<typeof timestampDate>[0]).toISOString() : null;

/** A request for --json (the response body parsed when it is JSON). */
export function requestView(r: BatchRequest) {
  let body: unknown = r.response ? bodyText(r.response.body) : undefined;
  if (typeof body === "string") {
    try {
      body = JSON.parse(body);
    } catch {
      // not JSON: kept as text
    }
  }
  return {
    id: r.id,
    batch_id: r.batchId,
    custom_id: r.customId === "" ? null : r.customId,
    line: r.line,
    model: r.model,
    state: requestStateName(r.state),
    attempts: r.attempt,
    method: r.method,
    url: r.url,
    response: r.response ? { status_code: r.response.statusCode, body } : null,
    error: r.error ? { code: r.error.code, message: r.error.message } : null,
    create_time: iso(r.createTime),
    update_time: iso(r.updateTime),
    not_before_time: iso(r.notBeforeTime),
    finish_time: iso(r.finishTime),
  };
}

/** An attempt for --json and for the table. */
export function attemptView(a: RequestAttempt) {
  const start = a.startTime ? timestampDate(a.startTime) : undefined;
  const end = a.endTime ? timestampDate(a.endTime) : undefined;
  return {
    attempt: a.attempt,
    start_time: start?.toISOString() ?? null,
    end_time: end?.toISOString() ?? null,
    latency_ms: start && end ? end.getTime() - start.getTime() : null,
    status_code: a.statusCode === 0 ? null : a.statusCode,
    error_code: a.errorCode === "" ? null : a.errorCode,
    outcome:
      a.outcome === RequestState.UNSPECIFIED
        ? "running"
        : a.outcome === RequestState.PENDING
          ? "retried"
          : requestStateName(a.outcome),
  };
}

/** A response body as text (bodies may travel as text or as bytes). */
function bodyText(body: string | Uint8Array): string {
  return typeof body === "string" ? body : new TextDecoder().decode(body);
}

/** One line of text, cut to `max` characters. */
function cut(text: string, max: number): string {
  const one = text.replace(/\s+/g, " ").trim();
  return one.length <= max ? one : `${one.slice(0, max - 1)}…`;
}

/** The rows of the `requests` table. */
export function requestRows(requests: BatchRequest[]): string[][] {
  return requests.map((r) => [
    String(r.line),
    r.id,
    r.customId,
    r.model,
    requestStateName(r.state),
    String(r.attempt),
    r.response ? String(r.response.statusCode) : "",
    r.error ? cut(`${r.error.code}: ${withoutTarget(r.error.message)}`, 60) : "",
  ]);
}

/**
 * An error message without the "POST https://host/path" it starts with (the
 * request's own method and URL, long enough to push "answered 429" past the
 * column's cut).
 */
export function withoutTarget(message: string): string {
  return message.replace(/^[A-Z]+ https?:\/\/\S*?(?:: | )/, "");
}

export const REQUEST_HEADER = [
  "LINE",
  "ID",
  "CUSTOM_ID",
  "MODEL",
  "STATE",
  "ATTEMPTS",
  "STATUS",
  "ERROR",
];

/** The human view of one request and its attempts. */
export function requestText(r: BatchRequest, attempts: RequestAttempt[]): string {
  const v = requestView(r);
  const rows: Array<[string, string | null]> = [
    ["batch", v.batch_id],
    ["custom_id", v.custom_id],
    ["line", String(v.line)],
    ["model", v.model],
    ["state", v.state],
    ["request", `${v.method} ${v.url}`],
    ["status", v.response ? String(v.response.status_code) : null],
    ["error", v.error ? `${v.error.code}: ${v.error.message}` : null],
    ["retry at", v.not_before_time],
    ["created", v.create_time],
    ["finished", v.finish_time],
  ];
  const head = rows
    .filter(([, val]) => val !== null)
    .map(([k, val]) => `  ${k.padEnd(11)}${val}`)
    .join("\n");
  const text = r.response ? bodyText(r.response.body) : "";
  const body = text ? `\nresponse body:\n${cut(text, 2000)}\n` : "";
  const list =
    attempts.length === 0
      ? "no attempts yet\n"
      : table(
          ["ATTEMPT", "STARTED", "LATENCY", "OUTCOME", "STATUS", "ERROR"],
          attempts
            .map(attemptView)
            .map((a) => [
              String(a.attempt),
              a.start_time ?? "",
              a.latency_ms === null ? "" : formatLatency(a.latency_ms),
              a.outcome,
              a.status_code === null ? "" : String(a.status_code),
              a.error_code ?? "",
            ]),
        );
  return `request ${v.id}\n${head}\n${body}\n${list}`;
}

function formatLatency(ms: number): string {
  return ms < 1000 ? `${ms} ms` : formatDuration(ms / 1000);
}

/** Pages through a batch's requests with the filters; yields each request. */
export async function* batchRequests(
  conn: Connection,
  batchId: string,
  filter: { states: RequestState[]; models: string[] },
): AsyncGenerator<BatchRequest> {
  let pageToken = "";
  do {
    const page = await conn.batch.listBatchRequests({
      batchId,
      states: filter.states,
      models: filter.models,
      pageSize: 1000,
      pageToken,
    });
    yield* page.requests;
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
}

/** requests BATCH: a table (or --json) of the batch's requests, filtered. */
export async function requestsAction(
  conn: Connection,
  json: boolean,
  batchId: string,
  o: { states: RequestState[]; models: string[]; limit: number },
): Promise<void> {
  const shown: BatchRequest[] = [];
  let more = false;
  for await (const r of batchRequests(conn, batchId, o)) {
    if (o.limit > 0 && shown.length === o.limit) {
      more = true;
      break;
    }
    shown.push(r);
  }
  if (json) {
    print(JSON.stringify({ requests: shown.map(requestView), truncated: more }, null, 2));
    return;
  }
  if (shown.length === 0) {
    print("no requests match");
    return;
  }
  print(table(REQUEST_HEADER, requestRows(shown)));
  if (more) {
    process.stderr.write(
      `only the first ${o.limit} shown; --limit 0 shows all (--json for every field)\n`,
    );
  }
}

/** request ID (or BATCH --custom-id X): one request and its attempts. */
export async function requestAction(
  conn: Connection,
  json: boolean,
  key: { requestId: string } | { batchId: string; customId: string },
): Promise<void> {
  const res = await conn.batch.getRequest(key);
  const r = res.request!;
  if (json) {
    print(
      JSON.stringify(
        { ...requestView(r), attempt_history: res.attempts.map(attemptView) },
        null,
        2,
      ),
    );
  } else {
    print(requestText(r, res.attempts));
  }
}
