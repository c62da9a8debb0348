/**
 * The HTTP edge of the OpenAI-compatible API (docs/openai-api.md): JSON in
 * and out, and errors in OpenAI's shape with the status codes the SDKs map.
 * Domain errors are mapped through the Connect API's one table
 * (src/api/errors.ts), then from gRPC codes to HTTP statuses here.
 */
import type http from "node:http";
import type http2 from "node:http2";
import { Code } from "@connectrpc/connect";
import { toConnectError } from "../api/errors.js";
import { InvalidArgumentError } from "../domain/errors.js";

export type Req = http.IncomingMessage | http2.Http2ServerRequest;
export type Res = http.ServerResponse | http2.Http2ServerResponse;

/** An answer in OpenAI's error shape. */
export class OpenAiError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

/** Each gRPC code's HTTP status and OpenAI error type. */
const STATUS_OF: Partial<Record<Code, [number, string]>> = {
  [Code.InvalidArgument]: [400, "invalid_request_error"],
  [Code.Unauthenticated]: [401, "authentication_error"],
  [Code.PermissionDenied]: [403, "permission_denied_error"],
  [Code.NotFound]: [404, "not_found_error"],
  [Code.FailedPrecondition]: [409, "conflict_error"],
  [Code.AlreadyExists]: [409, "conflict_error"],
  [Code.ResourceExhausted]: [429, "rate_limit_error"],
  [Code.Unavailable]: [503, "server_error"],
  [Code.DeadlineExceeded]: [504, "server_error"],
};

/** Any error as an OpenAiError; unexpected ones are logged (as the Connect API does). */
export function toOpenAiError(e: unknown, log: (err: unknown) => void): OpenAiError {
  if (e instanceof OpenAiError) return e;
  const ce = toConnectError(e, log);
  const [status, type] = STATUS_OF[ce.code] ?? [500, "server_error"];
  const param = e instanceof InvalidArgumentError ? e.field : null;
  return new OpenAiError(status, type, ce.rawMessage, param, null);
}

/** Writes `body` as JSON with `status`. */
export function sendJson(res: Res, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

/** Writes an error, or cuts the stream when the answer had begun. */
export function sendError(res: Res, e: OpenAiError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, e.status, {
    error: { message: e.message, type: e.type, param: e.param, code: e.code },
  });
}

/** Most bytes of a JSON request body (a batch's fields; files come as multipart). */
const MAX_JSON_BYTES = 1024 * 1024;

/** The request's JSON object body ({} when empty). */
export async function readJson(req: Req): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_JSON_BYTES) {
      throw new OpenAiError(
        413,
        "invalid_request_error",
        `the body is over ${MAX_JSON_BYTES} bytes`,
      );
    }
    chunks.push(c);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (text.trim() === "") return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new OpenAiError(400, "invalid_request_error", "the body is not valid JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new OpenAiError(400, "invalid_request_error", "the body must be a JSON object");
  }
  return value as Record<string, unknown>;
}

/** A 400 naming `param`. */
export function badParam(param: string, message: string): OpenAiError {
  return new OpenAiError(400, "invalid_request_error", `${param}: ${message}`, param);
}

/** Unix seconds of `d`, or null. */
export function unixSeconds(d: Date | null | undefined): number | null {
  return d == null ? null : Math.floor(d.getTime() / 1000);
}
