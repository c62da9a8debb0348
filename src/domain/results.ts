/**
 * Result lines in the OpenAI Batch API formats (pure: no I/O). Each
 * terminal request becomes one JSON object for the output file (completed)
 * or the error file (failed, expired, canceled):
 *
 *   {"id":"batch_req_…","custom_id":"…","response":{"status_code":200,"request_id":"…","body":{…}},"error":null}
 *   {"id":"batch_req_…","custom_id":"…","response":{…}|null,"error":{"code":"…","message":"…"}}
 *
 * Keys and types follow OpenAI's `BatchRequestOutput` schema: `response` is
 * null when no upstream status was received; `body` is the parsed JSON body,
 * or the raw text when the body is not JSON (an upstream's HTML error page).
 */
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
  responseBody: string | null;
  errorCode: string | null;
  errorMessage: string | null;
}

/** The `response` object of a line. */
export interface ResultResponse {
  status_code: number;
  request_id: string;
  body: unknown;
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

/** A response body as JSON when it parses, else the text as it came. */
export function parseBody(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
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
          body: parseBody(r.responseBody ?? ""),
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

/** A line serialised as one JSON object (no trailing newline). */
export function formatResultLine(line: ResultLine): string {
  return JSON.stringify(line);
}
