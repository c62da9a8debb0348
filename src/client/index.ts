/**
 * `fusillade/client`: the TypeScript client. Typed helpers over the
 * generated Connect clients (no second, hand-written API): files, batches,
 * status, a batch's progress and requests as async iterators, results as
 * OpenAI batch lines, and every failure as one FusilladeError carrying the
 * gRPC code.
 *
 * ```ts
 * const fusillade = createFusilladeClient({ baseUrl: "http://127.0.0.1:8080" });
 * const file = await fusillade.createFile({ templates: [...] });
 * const batch = await fusillade.createBatch(file.id);
 * for await (const b of fusillade.watchBatch(batch.id)) console.log(b.counts);
 * for await (const line of fusillade.results(batch.id)) console.log(line.custom_id);
 * fusillade.close();
 * ```
 *
 * src/client/ is the published client library: it may import src/gen only.
 */
import { randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { basename } from "node:path";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  type Client,
  Code,
  ConnectError,
  createClient,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AdminService } from "../gen/fusillade/v1/admin_service_pb.js";
import {
  BatchService,
  GetBatchResultsRequest_Kind,
  GetBatchResultsResponse_Kind,
  type GetBatchStatusResponse,
  type GetRequestResponse,
  type UploadFileRequest,
  UploadFileRequestSchema,
} from "../gen/fusillade/v1/batch_service_pb.js";
import {
  type Batch,
  type BatchRequest,
  BatchState,
  type File,
  RequestState,
} from "../gen/fusillade/v1/resources_pb.js";

export { Code } from "@connectrpc/connect";
export { AdminService } from "../gen/fusillade/v1/admin_service_pb.js";
export type {
  GetBatchStatusResponse,
  GetRequestResponse,
  RequestAttempt,
} from "../gen/fusillade/v1/batch_service_pb.js";
export { BatchService } from "../gen/fusillade/v1/batch_service_pb.js";
export type {
  Batch,
  BatchRequest,
  File,
  RequestCounts,
  RequestResponse,
} from "../gen/fusillade/v1/resources_pb.js";
export { BatchState, RequestState } from "../gen/fusillade/v1/resources_pb.js";

/** Options of {@link createFusilladeClient}. */
export interface FusilladeClientOptions {
  /** The control plane, e.g. "http://127.0.0.1:8080". */
  baseUrl: string;
  /** An API token (docs/trust.md), sent as `Authorization: Bearer <token>`. @default none (a local server needs none) */
  token?: string;
  /** HTTP/2 (h2c for http://) or HTTP/1.1; the server speaks both. @default "2" */
  httpVersion?: "1.1" | "2";
  /** Another transport (gRPC, gRPC-Web, in-memory); baseUrl, token and httpVersion are then ignored. */
  transport?: Transport;
}

/** Every failure of a client call: the gRPC code and the server's message (it names the field, and the JSONL line). */
export class FusilladeError extends Error {
  constructor(
    /** The gRPC code, e.g. Code.NotFound. */
    readonly code: Code,
    /** The server's message without the code, e.g. `line 3: custom_id: is required …`. */
    readonly rawMessage: string,
    options?: ErrorOptions,
  ) {
    super(`[${Code[code] ?? code}] ${rawMessage}`, options);
    this.name = "FusilladeError";
  }

  /** The code's name, e.g. "NotFound". */
  get codeName(): string {
    return Code[this.code] ?? "Unknown";
  }

  /** A Connect error as a FusilladeError (its cause). */
  static from(e: ConnectError): FusilladeError {
    return new FusilladeError(e.code, e.rawMessage, { cause: e });
  }
}

/** One request template (the templates form of a file). */
export interface TemplateInit {
  /** The caller's identifier, unique within the file. */
  customId?: string;
  /** Base URL, e.g. "https://api.openai.com". */
  endpoint: string;
  /** @default "POST" */
  method?: string;
  /** Appended to the endpoint, e.g. "/v1/chat/completions". */
  path: string;
  /** A JSON value (sent as JSON) or JSON text. */
  body: unknown;
  /** The model whose limit applies. @default body.model */
  model?: string;
  /** Sent as `Authorization: Bearer <apiKey>`. Never returned. */
  apiKey?: string;
}

/** What a JSONL file is sent with: OpenAI batch lines plus where they go. */
export interface JsonlOptions {
  /** Base URL each line's `url` is appended to. */
  endpoint: string;
  apiKey?: string;
  filename?: string;
}

/** Options of createBatch; unset fields take the server's defaults. */
export interface BatchOptions {
  /** e.g. "24h", "90m". @default "24h" (the server's) */
  completionWindow?: string;
  metadata?: Record<string, string>;
  retryPolicy?: { maxRetries?: number; initialBackoffMs?: number; maxBackoffMs?: number };
  /** Idempotency key: the same key returns the first batch. @default a fresh one */
  requestId?: string;
  /**
   * Priority class, -100..100: a busy model's slots go to the highest class
   * with work first (docs/fair-share.md). @default 0
   */
  priority?: number;
}

/** Request states by name. */
export type RequestStateName =
  | "pending"
  | "in_progress"
  | "completed"
  | "failed"
  | "cancelled"
  | "expired";

/** Request states by the names users type (the CLI's --state takes the same). */
export const REQUEST_STATE_BY_NAME: Readonly<Record<RequestStateName, RequestState>> = {
  pending: RequestState.PENDING,
  in_progress: RequestState.LEASED,
  completed: RequestState.COMPLETED,
  failed: RequestState.FAILED,
  cancelled: RequestState.CANCELED,
  expired: RequestState.EXPIRED,
};

/** A line of an OpenAI batch output (completed) or error file. */
export interface ResultLine {
  id: string;
  custom_id: string | null;
  response: { status_code: number; request_id: string; body: unknown } | null;
  error: { code: string; message: string } | null;
}

/** The helpers `createFusilladeClient` returns. */
export interface FusilladeClient {
  /** The generated clients, for everything the helpers do not cover. */
  readonly batchService: Client<typeof BatchService>;
  readonly adminService: Client<typeof AdminService>;
  /** A file from templates, or from JSONL text sent in one message (small files; see uploadFile). */
  createFile(
    input:
      | { templates: TemplateInit[]; filename?: string }
      | ({ jsonl: string | Uint8Array } & JsonlOptions),
  ): Promise<File>;
  /** A file from a JSONL file on disk or a byte stream, streamed in chunks (any size). */
  uploadFile(source: string | AsyncIterable<Uint8Array>, options: JsonlOptions): Promise<File>;
  /** Starts a batch: one request per template of the file. */
  createBatch(fileId: string, options?: BatchOptions): Promise<Batch>;
  getBatch(batchId: string): Promise<Batch>;
  /** The batch's state and per-state counts. */
  getBatchStatus(batchId: string): Promise<GetBatchStatusResponse>;
  /** The batch now, then at each change (at most every minIntervalMs), ending when it is terminal. */
  watchBatch(
    batchId: string,
    options?: { minIntervalMs?: number; signal?: AbortSignal },
  ): AsyncIterable<Batch>;
  /** The batch's requests, a page at a time, optionally only some states and models. */
  listRequests(
    batchId: string,
    filter?: { states?: RequestStateName[]; models?: string[]; pageSize?: number },
  ): AsyncIterable<BatchRequest[]>;
  /** One request with its attempts, by id or by batch and custom_id. */
  getRequest(
    key: { requestId: string } | { batchId: string; customId: string },
  ): Promise<GetRequestResponse>;
  /** The batch's result lines (OpenAI format) for the requests finished so far. */
  results(batchId: string, options?: { only?: "output" | "errors" }): AsyncIterable<ResultLine>;
  cancelBatch(batchId: string): Promise<Batch>;
  /** Failed and expired requests (all, or those named) back to pending; `resume` also runs cancelled ones. */
  retryBatch(
    batchId: string,
    options?: {
      customIds?: string[];
      requestIds?: string[];
      completionWindow?: string;
      resume?: boolean;
    },
  ): Promise<{ batch: Batch; retried: number }>;
  /** Closes the HTTP/2 connection (the process can then exit). */
  close(): void;
}

/** Bytes per UploadFile message: well under any message limit. */
const CHUNK_BYTES = 1024 * 1024;

/** Whether no request of the batch will change again. */
export function isBatchTerminal(state: BatchState): boolean {
  return (
    state === BatchState.COMPLETED || state === BatchState.CANCELLED || state === BatchState.EXPIRED
  );
}

/** A request's response body as text, whether it travels as text or as bytes. */
export function responseText(response: { body: string | Uint8Array } | undefined): string {
  if (response === undefined) return "";
  return typeof response.body === "string"
    ? response.body
    : new TextDecoder().decode(response.body);
}

function rethrow(e: unknown): never {
  throw e instanceof ConnectError ? FusilladeError.from(e) : e;
}

/** Runs a call; a ConnectError becomes a FusilladeError. */
async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    rethrow(e);
  }
}

/** Iterates a server stream; a ConnectError becomes a FusilladeError. */
async function* stream<T>(iterable: () => AsyncIterable<T>): AsyncGenerator<T> {
  try {
    yield* iterable();
  } catch (e) {
    rethrow(e);
  }
}

function bodyText(body: unknown): string {
  return typeof body === "string" ? body : JSON.stringify(body);
}

function bytesOf(text: string | Uint8Array): Uint8Array {
  return typeof text === "string" ? new TextEncoder().encode(text) : text;
}

/** A client of the control plane at `baseUrl`. */
export function createFusilladeClient(options: FusilladeClientOptions): FusilladeClient {
  let sessions: Http2SessionManager | undefined;
  let transport = options.transport;
  if (!transport) {
    const interceptors: Interceptor[] = [];
    const token = options.token;
    if (token !== undefined && token !== "") {
      interceptors.push((next) => (req) => {
        req.header.set("authorization", `Bearer ${token}`);
        return next(req);
      });
    }
    const httpVersion = options.httpVersion ?? "2";
    if (httpVersion === "2") sessions = new Http2SessionManager(options.baseUrl);
    transport = createConnectTransport({
      baseUrl: options.baseUrl,
      httpVersion,
      sessionManager: sessions,
      interceptors,
    });
  }
  const batch = createClient(BatchService, transport);
  const admin = createClient(AdminService, transport);

  return {
    batchService: batch,
    adminService: admin,

    createFile: (input) =>
      call(async () => {
        const res =
          "templates" in input
            ? await batch.createFile({
                requestId: randomUUID(),
                filename: input.filename ?? "",
                templates: input.templates.map((t) => ({
                  customId: t.customId ?? "",
                  endpoint: t.endpoint,
                  method: t.method ?? "",
                  path: t.path,
                  body: bodyText(t.body),
                  model: t.model ?? "",
                  apiKey: t.apiKey ?? "",
                })),
              })
            : await batch.createFile({
                requestId: randomUUID(),
                filename: input.filename ?? "",
                jsonl: bytesOf(input.jsonl),
                endpoint: input.endpoint,
                apiKey: input.apiKey ?? "",
              });
        return res.file!;
      }),

    uploadFile: (source, opts) =>
      call(async () => {
        const chunks: AsyncIterable<Uint8Array> =
          typeof source === "string"
            ? createReadStream(source, { highWaterMark: CHUNK_BYTES })
            : source;
        async function* messages(): AsyncGenerator<UploadFileRequest> {
          yield create(UploadFileRequestSchema, {
            part: {
              case: "header",
              value: {
                requestId: randomUUID(),
                filename: opts.filename ?? (typeof source === "string" ? basename(source) : ""),
                endpoint: opts.endpoint,
                apiKey: opts.apiKey ?? "",
              },
            },
          });
          for await (const chunk of chunks) {
            yield create(UploadFileRequestSchema, { part: { case: "chunk", value: chunk } });
          }
        }
        return (await batch.uploadFile(messages())).file!;
      }),

    createBatch: (fileId, o = {}) =>
      call(async () => {
        const p = o.retryPolicy;
        const res = await batch.createBatch({
          requestId: o.requestId ?? randomUUID(),
          fileId,
          completionWindow: o.completionWindow ?? "",
          metadata: o.metadata ?? {},
          priority: o.priority ?? 0,
          retryPolicy: p && {
            maxRetries: p.maxRetries,
            initialBackoff:
              p.initialBackoffMs === undefined ? undefined : durationFromMs(p.initialBackoffMs),
            maxBackoff: p.maxBackoffMs === undefined ? undefined : durationFromMs(p.maxBackoffMs),
          },
        });
        return res.batch!;
      }),

    getBatch: (batchId) => call(async () => (await batch.getBatch({ batchId })).batch!),

    getBatchStatus: (batchId) => call(() => batch.getBatchStatus({ batchId })),

    watchBatch: (batchId, o = {}) =>
      stream(async function* () {
        const minInterval =
          o.minIntervalMs === undefined ? undefined : durationFromMs(o.minIntervalMs);
        for await (const m of batch.watchBatch({ batchId, minInterval }, { signal: o.signal })) {
          yield m.batch!;
          if (isBatchTerminal(m.batch!.state)) return;
        }
      }),

    listRequests: (batchId, f = {}) =>
      stream(async function* () {
        let pageToken = "";
        do {
          const page = await batch.listBatchRequests({
            batchId,
            pageToken,
            pageSize: f.pageSize ?? 0,
            states: (f.states ?? []).map((s) => {
              const v = REQUEST_STATE_BY_NAME[s];
              if (v === undefined) {
                throw new FusilladeError(
                  Code.InvalidArgument,
                  `states: unknown request state ${JSON.stringify(s)}`,
                );
              }
              return v;
            }),
            models: f.models ?? [],
          });
          yield page.requests;
          pageToken = page.nextPageToken;
        } while (pageToken !== "");
      }),

    getRequest: (key) => call(() => batch.getRequest(key)),

    results: (batchId, o = {}) =>
      stream(async function* () {
        const kind =
          o.only === "output"
            ? GetBatchResultsRequest_Kind.OUTPUT
            : o.only === "errors"
              ? GetBatchResultsRequest_Kind.ERRORS
              : GetBatchResultsRequest_Kind.ALL;
        for await (const m of batch.getBatchResults({ batchId, kind })) {
          if (
            m.kind === GetBatchResultsResponse_Kind.OUTPUT ||
            m.kind === GetBatchResultsResponse_Kind.ERROR
          ) {
            yield JSON.parse(m.line) as ResultLine;
          }
        }
      }),

    cancelBatch: (batchId) => call(async () => (await batch.cancelBatch({ batchId })).batch!),

    retryBatch: (batchId, o = {}) =>
      call(async () => {
        const res = await batch.retryBatch({
          batchId,
          customIds: o.customIds ?? [],
          requestIds: o.requestIds ?? [],
          completionWindow: o.completionWindow ?? "",
          resume: o.resume ?? false,
        });
        return { batch: res.batch!, retried: Number(res.retriedCount) };
      }),

    close: () => sessions?.abort(),
  };
}
