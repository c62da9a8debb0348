/**
 * Request templates: validation of the two input forms (a template list and
 * an OpenAI batch JSONL body) into one normalized shape. Pure.
 */
import { InvalidArgumentError } from "./errors.js";
import { nestsDeeperThan } from "./json-text.js";

/** A validated template, ready to store. */
export interface TemplateRow {
  line: number;
  customId: string | null;
  endpoint: string;
  method: string;
  path: string;
  body: string;
  model: string;
  apiKey: string | null;
}

/** The fields of a template as a client gives them (before validation). */
export interface TemplateInput {
  customId: string;
  endpoint: string;
  method: string;
  path: string;
  body: string;
  model: string;
  apiKey: string;
}

export const METHODS = new Set(["GET", "POST", "PUT", "PATCH", "DELETE"]);
/** Longest custom_id accepted (OpenAI accepts 512 too). */
export const MAX_CUSTOM_ID_LENGTH = 512;
/** Longest single JSONL line accepted. */
export const MAX_LINE_BYTES = 32 * 1024 * 1024;

/**
 * Rejects text Postgres cannot store: a text value cannot hold U+0000 (it
 * failed as an internal error on INSERT). Returns `value`.
 */
export function validateText(value: string, field: string, line?: number): string {
  if (value.includes("\0")) {
    throw new InvalidArgumentError(field, "must not contain NUL (U+0000) characters", line);
  }
  return value;
}

/** Validates a base URL; returns it without a trailing slash. */
export function validateEndpoint(endpoint: string, field: string, line?: number): string {
  if (endpoint === "") throw new InvalidArgumentError(field, "is required", line);
  validateText(endpoint, field, line);
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new InvalidArgumentError(field, `is not a URL: ${JSON.stringify(endpoint)}`, line);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new InvalidArgumentError(field, "must be an http:// or https:// URL", line);
  }
  if (url.search !== "" || url.hash !== "" || endpoint.includes("#") || endpoint.includes("?")) {
    throw new InvalidArgumentError(field, "must not carry a query or fragment", line);
  }
  if (url.username !== "" || url.password !== "") {
    throw new InvalidArgumentError(
      field,
      "must not carry a user or password (credentials go in api_key)",
      line,
    );
  }
  return endpoint.replace(/\/+$/, "");
}

/**
 * Shortest API key accepted. An upstream that echoes request headers writes
 * the key into its response, and the dispatcher redacts it there: a shorter
 * key cannot be told apart from ordinary text (redacting "abc" would mangle
 * every body that says "abc"), and is no credential anyway.
 */
export const MIN_API_KEY_LENGTH = 8;

/**
 * Checks an API key (sent as `authorization: Bearer <key>`); "" is none.
 * Refused here rather than at dispatch: control characters (CR/LF would split
 * the header), spaces, anything beyond ASCII, and keys too short to redact.
 * Messages never quote the key.
 */
export function validateApiKey(value: string, field: string, line?: number): string | null {
  if (value === "") return null;
  if (/^bearer\s/i.test(value)) {
    throw new InvalidArgumentError(field, 'must be the key alone, without "Bearer "', line);
  }
  const bad = /[^\x21-\x7e]/.exec(value);
  if (bad !== null) {
    const code = bad[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0");
    throw new InvalidArgumentError(
      field,
      `must be printable ASCII without spaces or control characters (it is sent in an HTTP header): character ${bad.index + 1} is U+${code}`,
      line,
    );
  }
  if (value.length < MIN_API_KEY_LENGTH) {
    throw new InvalidArgumentError(
      field,
      `is ${value.length} characters long; an API key needs at least ${MIN_API_KEY_LENGTH}, or it could not be redacted from responses that echo it`,
      line,
    );
  }
  return value;
}

function validateCustomId(value: unknown, field: string, line: number): string | null {
  if (value === undefined || value === null || value === "") return null;
  if (typeof value !== "string") throw new InvalidArgumentError(field, "must be a string", line);
  if (value.length > MAX_CUSTOM_ID_LENGTH) {
    throw new InvalidArgumentError(
      field,
      `is longer than ${MAX_CUSTOM_ID_LENGTH} characters`,
      line,
    );
  }
  return validateText(value, field, line);
}

function validateMethod(value: unknown, field: string, line: number): string {
  if (value === undefined || value === null || value === "") return "POST";
  if (typeof value !== "string" || !METHODS.has(value.toUpperCase())) {
    throw new InvalidArgumentError(field, `must be one of ${[...METHODS].join(", ")}`, line);
  }
  return value.toUpperCase();
}

function validatePath(value: unknown, field: string, line: number): string {
  if (typeof value !== "string" || value === "") {
    throw new InvalidArgumentError(
      field,
      "is required (a path such as /v1/chat/completions)",
      line,
    );
  }
  if (!value.startsWith("/")) {
    throw new InvalidArgumentError(field, `must be a path starting with "/"`, line);
  }
  return validateText(value, field, line);
}

/**
 * Longest model name, in UTF-8 bytes. A model name travels in NOTIFY
 * payloads (at most ~8,000 bytes) and is a key of btree indexes (entries of
 * at most ~2,700 bytes); real model names are well under 100 bytes.
 */
export const MAX_MODEL_BYTES = 200;

/** Checks a model name (from a template, or from SetModelLimit). */
export function validateModel(value: string, field: string, line?: number): string {
  const bytes = Buffer.byteLength(value);
  if (bytes > MAX_MODEL_BYTES) {
    throw new InvalidArgumentError(
      field,
      `is ${bytes} bytes long; a model name may have at most ${MAX_MODEL_BYTES}`,
      line,
    );
  }
  return validateText(value, field, line);
}

function modelOf(body: unknown, explicit: string, field: string, line: number): string {
  if (explicit !== "") return validateModel(explicit, field, line);
  const model =
    typeof body === "object" && body !== null ? (body as Record<string, unknown>).model : undefined;
  if (typeof model !== "string" || model === "") {
    throw new InvalidArgumentError(field, "is required (a non-empty string)", line);
  }
  return validateModel(model, field, line);
}

/** Deepest nesting of a JSONL line (the line's object is level 1, its body level 2). */
export const MAX_LINE_DEPTH = 513;
/** Deepest nesting of a request body, in a JSONL line or a template. */
export const MAX_BODY_DEPTH = MAX_LINE_DEPTH - 1;

/** Validates one template of a template list; `line` is its 1-based index. */
export function validateTemplate(t: TemplateInput, line: number): TemplateRow {
  const at = `templates[${line - 1}]`;
  let parsedBody: unknown;
  if (t.body !== "") {
    try {
      parsedBody = JSON.parse(t.body);
    } catch {
      throw new InvalidArgumentError(`${at}.body`, "is not valid JSON", line);
    }
    // The same bound as a JSONL line's body (one level less: no line object around it).
    if (nestsDeeperThan(t.body, MAX_BODY_DEPTH)) {
      throw new InvalidArgumentError(
        `${at}.body`,
        `nests deeper than ${MAX_BODY_DEPTH} levels`,
        line,
      );
    }
  }
  return {
    line,
    customId: validateCustomId(t.customId, `${at}.custom_id`, line),
    endpoint: validateEndpoint(t.endpoint, `${at}.endpoint`, line),
    method: validateMethod(t.method, `${at}.method`, line),
    path: validatePath(t.path, `${at}.path`, line),
    body: t.body,
    model: modelOf(parsedBody, t.model, `${at}.model`, line),
    apiKey: validateApiKey(t.apiKey, `${at}.api_key`, line),
  };
}

/**
 * The body of batch line `text` exactly as written, when native searches
 * alone can cut it out; undefined when they cannot (the caller serialises
 * the parsed body instead, which costs as much as parsing the line).
 *
 * `text` must be valid JSON whose object has exactly the four keys, the
 * three besides body holding strings. Without \u escapes every key is
 * spelled literally, and an escaped quote never makes a token, so a single
 * "body" token is the body's key. The body is the last member when the line
 * ends with two closing braces: had another member come last, its value
 * (the last one of that key, a string) would end the line. A single "model"
 * token keeps the model the upstream reads the one counted against its
 * limit: duplicate keys are collapsed only by serialising again.
 */
function bodyTextOf(text: string): string | undefined {
  if (text.includes("\\u")) return undefined;
  const at = text.indexOf('"body"');
  if (at < 0 || text.indexOf('"body"', at + 1) >= 0) return undefined;
  const colon = skipSpace(text, at + 6, 1);
  const start = skipSpace(text, colon + 1, 1);
  const close = skipSpace(text, text.length - 1, -1);
  const end = skipSpace(text, close - 1, -1);
  if (text[colon] !== ":" || text[start] !== "{" || text[close] !== "}" || text[end] !== "}") {
    return undefined;
  }
  const body = text.slice(start, end + 1);
  const model = body.indexOf('"model"');
  return model >= 0 && body.indexOf('"model"', model + 1) < 0 ? body : undefined;
}

/** The first index from `i` in direction `step` that is not JSON whitespace. */
function skipSpace(text: string, i: number, step: 1 | -1): number {
  for (;;) {
    const c = text.charCodeAt(i);
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return i;
    i += step;
  }
}

/**
 * Parses one OpenAI batch line: {"custom_id","method","url","body"}, all
 * four required, the model read from body.model. `endpoint` was validated by
 * the caller.
 */
export function parseJsonlLine(
  text: string,
  line: number,
  endpoint: string,
  apiKey: string | null,
): TemplateRow {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new InvalidArgumentError("jsonl", `not valid JSON (${(e as Error).message})`, line);
  }
  // The body may be serialised again below, which recurses per level.
  if (nestsDeeperThan(text, MAX_LINE_DEPTH)) {
    throw new InvalidArgumentError("body", `nests deeper than ${MAX_BODY_DEPTH} levels`, line);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new InvalidArgumentError("jsonl", "must be a JSON object", line);
  }
  const o = value as Record<string, unknown>;
  // OpenAI's batch format requires all four fields. A line without a
  // custom_id gives a result no one can match to its input; one without a
  // method is most likely not a batch line at all.
  for (const [field, example] of [
    ["custom_id", '"request-1"'],
    ["method", '"POST"'],
  ] as const) {
    if (o[field] === undefined || o[field] === null || o[field] === "") {
      throw new InvalidArgumentError(field, `is required (e.g. "${field}": ${example})`, line);
    }
  }
  const body = o.body;
  if (body === undefined || typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new InvalidArgumentError("body", "is required (a JSON object)", line);
  }
  return {
    line,
    customId: validateCustomId(o.custom_id, "custom_id", line),
    endpoint,
    method: validateMethod(o.method, "method", line),
    path: validatePath(o.url, "url", line),
    body: (Object.keys(o).length === 4 && bodyTextOf(text)) || JSON.stringify(body),
    model: modelOf(body, "", "body.model", line),
    apiKey,
  };
}

/**
 * Splits a stream of byte chunks into lines (UTF-8, LF or CRLF), numbered
 * from 1, skipping blank ones. Lines may span chunks.
 */
export async function* splitLines(
  chunks: AsyncIterable<Uint8Array>,
): AsyncGenerator<{ line: number; text: string }> {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let carry = "";
  let line = 0;
  let carryBytes = 0;
  const emit = function* (part: string) {
    line++;
    const text = part.endsWith("\r") ? part.slice(0, -1) : part;
    if (text.trim() !== "") yield { line, text };
  };
  for await (const chunk of chunks) {
    let text: string;
    try {
      text = decoder.decode(chunk, { stream: true });
    } catch {
      throw new InvalidArgumentError("jsonl", "is not valid UTF-8", line + 1);
    }
    carryBytes += chunk.byteLength;
    let start = 0;
    let nl = text.indexOf("\n");
    if (nl === -1) {
      carry += text;
    } else {
      yield* emit(carry + text.slice(0, nl));
      carry = "";
      carryBytes = 0;
      start = nl + 1;
      nl = text.indexOf("\n", start);
      while (nl !== -1) {
        yield* emit(text.slice(start, nl));
        start = nl + 1;
        nl = text.indexOf("\n", start);
      }
      carry = text.slice(start);
      carryBytes = Buffer.byteLength(carry);
    }
    if (carryBytes > MAX_LINE_BYTES) {
      throw new InvalidArgumentError(
        "jsonl",
        `line is longer than ${MAX_LINE_BYTES} bytes`,
        line + 1,
      );
    }
  }
  try {
    carry += decoder.decode();
  } catch {
    throw new InvalidArgumentError("jsonl", "is not valid UTF-8", line + 1);
  }
  if (carry !== "") yield* emit(carry);
}
