/**
 * Result lines in the OpenAI Batch API formats (pure: no I/O). Each
 * terminal request becomes one JSON object for the output file (completed)
 * or the error file (failed, expired, canceled):
 *
 *   {"id":"batch_req_…","custom_id":"…","response":{"status_code":200,"request_id":"…","body":{…}},"error":null}
 *   {"id":"batch_req_…","custom_id":"…","response":{…}|null,"error":{"code":"…","message":"…"}}
 *
 * Keys and types follow OpenAI's `BatchRequestOutput` schema: `response` is
 * null when no upstream status was received; `body` is the upstream's JSON
 * body, or the body as a string when it is not JSON (an upstream's HTML error
 * page, bytes that are not UTF-8, JSON nested deeper than readers can parse).
 * A hostile body never breaks its line or the file: see {@link bodyJson}.
 */
import { compactJson } from "./json-text.js";
import type { RequestState } from "./states.js";

/** Which file a line belongs to. */
export type ResultKind = "output" | "error";

/** The facts of a terminal request a result line is made of. */
export interface ResultFacts {
  /** Our request id (a uuid). */
  id: string;
  customId: string | null;
  state: RequestState;
  responseStatus: number | null;
  responseHeaders: Record<string, string> | null;
  /** The body as the upstream sent it. */
  responseBody: Uint8Array | null;
  errorCode: string | null;
  errorMessage: string | null;
}

/** The `response` object of a line. */
export interface ResultResponse {
  status_code: number;
  request_id: string;
  /** JSON text, already safe to embed in one line (see {@link bodyJson}). */
  body: RawJson;
}

/** JSON text to be embedded as it is, not serialised again. */
export interface RawJson {
  json: string;
}

/** One line of an output or error file, before serialisation. */
export interface ResultLine {
  id: string;
  custom_id: string | null;
  response: ResultResponse | null;
  error: { code: string; message: string } | null;
}

/** Error codes of requests that never got an outcome of their own (OpenAI's names). */
const STATE_ERROR: Partial<Record<RequestState, { code: string; message: string }>> = {
  expired: {
    code: "batch_expired",
    message: "This request could not be executed before the completion window expired.",
  },
  canceled: {
    code: "batch_cancelled",
    message: "This request was not executed because the batch was cancelled.",
  },
  failed: { code: "request_failed", message: "The request failed." },
};

/** Response headers that carry the upstream's own request id, most specific first. */
const REQUEST_ID_HEADERS = ["x-request-id", "request-id"] as const;

/** The kind of line a request in `state` produces; undefined while it is not terminal. */
export function resultKind(state: RequestState): ResultKind | undefined {
  if (state === "completed") return "output";
  if (state === "failed" || state === "expired" || state === "canceled") return "error";
  return undefined;
}

/** The per-line id: "batch_req_" and our request id without dashes. */
export function resultLineId(requestId: string): string {
  return `batch_req_${requestId.replaceAll("-", "")}`;
}

const LINE_ID = /^batch_req_([0-9a-f]{8})([0-9a-f]{4})([0-9a-f]{4})([0-9a-f]{4})([0-9a-f]{12})$/i;

/**
 * A request id as given: a result line's id ("batch_req_…", resultLineId)
 * becomes the request id it was made from; anything else is returned as is.
 */
export function requestIdOf(id: string): string {
  const m = LINE_ID.exec(id);
  return m ? m.slice(1).join("-").toLowerCase() : id;
}

/**
 * Deepest nesting of a JSON body kept as JSON in a result line. Deeper bodies
 * go in as a string: common readers recurse per level (Python's `json` stops
 * near 1,000, V8's `JSON.stringify` near 10,000) and would fail on the whole
 * file for one line.
 */
export const MAX_RESULT_BODY_DEPTH = 256;

const utf8 = new TextDecoder("utf-8", { fatal: true });
const utf8Lossy = new TextDecoder("utf-8");

/** A body as text: exact when it is UTF-8, else with U+FFFD for the bytes that are not. */
export function bodyText(body: Uint8Array): { text: string; exact: boolean } {
  try {
    return { text: utf8.decode(body), exact: true };
  } catch {
    return { text: utf8Lossy.decode(body), exact: false };
  }
}

/**
 * A response body as JSON text for a result line: the upstream's JSON with
 * the whitespace between tokens removed (so a pretty-printed body cannot
 * break the line), or, when the body is not JSON, is not UTF-8 or nests
 * deeper than {@link MAX_RESULT_BODY_DEPTH}, a JSON string of its text
 * (bytes that are not UTF-8 become U+FFFD). Never recurses: no body makes it
 * throw.
 */
export function bodyJson(body: Uint8Array): RawJson {
  const { text, exact } = bodyText(body);
  if (!exact) return { json: JSON.stringify(text) };
  try {
    JSON.parse(text); // V8's parser does not recurse: any depth is fine here
  } catch {
    return { json: JSON.stringify(text) };
  }
  const compact = compactJson(text, MAX_RESULT_BODY_DEPTH);
  return { json: compact ?? JSON.stringify(text) };
}

/**
 * The line of a terminal request; undefined for a request not terminal.
 * `request_id` is the upstream's (x-request-id / request-id header) when it
 * sent one, else ours (the X-Fusillade-Request-Id every attempt carried).
 */
export function resultLine(r: ResultFacts): { kind: ResultKind; line: ResultLine } | undefined {
  const kind = resultKind(r.state);
  if (kind === undefined) return undefined;
  const headers = r.responseHeaders ?? {};
  const upstreamId = REQUEST_ID_HEADERS.map((h) => headers[h]).find((v) => v !== undefined);
  const response: ResultResponse | null =
    r.responseStatus === null
      ? null
      : {
          status_code: r.responseStatus,
          request_id: upstreamId ?? r.id,
          body: bodyJson(r.responseBody ?? new Uint8Array()),
        };
  let error: ResultLine["error"] = null;
  if (kind === "error") {
    const fallback = STATE_ERROR[r.state]!;
    // Expired and cancelled lines always carry OpenAI's code: tools match on it.
    const canonical = r.state === "expired" || r.state === "canceled";
    error = {
      code: canonical ? fallback.code : (r.errorCode ?? fallback.code),
      message: r.errorMessage ?? fallback.message,
    };
  }
  return {
    kind,
    line: { id: resultLineId(r.id), custom_id: r.customId, response, error },
  };
}

/** A line serialised as one JSON object (no trailing newline); the body goes in as it is. */
export function formatResultLine(line: ResultLine): string {
  const r = line.response;
  const response =
    r === null
      ? "null"
      : `{"status_code":${r.status_code},"request_id":${JSON.stringify(r.request_id)},"body":${r.body.json}}`;
  return `{"id":${JSON.stringify(line.id)},"custom_id":${JSON.stringify(line.custom_id)},"response":${response},"error":${JSON.stringify(line.error)}}`;
}
