/**
 * `fusillade/client`: the TypeScript client. Helpers over the generated
 * Connect clients that speak plain values: states as names ("completed"),
 * counts and sizes as numbers, times as Dates; files, batches, status, a
 * batch's progress and requests as async iterators, results as OpenAI batch
 * lines, and every failure as one FusilladeError carrying the gRPC code. The
 * generated clients are `raw`, the generated types and enums `gen`: one
 * level down.
 *
 * ```ts
 * const fusillade = createFusilladeClient({ baseUrl: "http://127.0.0.1:8080" });
 * const file = await fusillade.createFile({ templates: [...] });
 * const batch = await fusillade.createBatch(file.id);
 * for await (const b of fusillade.watchBatch(batch.id)) console.log(b.state, b.counts);
 * for await (const line of fusillade.results(batch.id)) console.log(line.custom_id);
 * fusillade.close();
 * ```
 *
 * src/client/ is the published client library: it may import src/gen only.
 */
import { type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AdminService } from "../gen/fusillade/v1/admin_service_pb.js";
import { BatchService } from "../gen/fusillade/v1/batch_service_pb.js";
import { batchMethods, fileMethods, requestMethods } from "./methods.js";
import type {
  Attempt,
  Batch,
  BatchStatus,
  File,
  ModelLimit,
  Request,
  RequestStateName,
} from "./views.js";

export { Code } from "@connectrpc/connect";
export { FusilladeError } from "./errors.js";
export * as gen from "./gen.js";
export {
  type Attempt,
  type Batch,
  type BatchStateName,
  type BatchStatus,
  type Counts,
  type File,
  isBatchTerminal,
  type ModelLimit,
  type ModelShare,
  REQUEST_STATE_BY_NAME,
  type Request,
  type RequestStateName,
  responseText,
} from "./views.js";

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

/** A line of an OpenAI batch output (completed) or error file. */
export interface ResultLine {
  /** "batch_req_…": also accepted wherever a request id is (getRequest, retryBatch). */
  id: string;
  custom_id: string | null;
  response: { status_code: number; request_id: string; body: unknown } | null;
  error: { code: string; message: string } | null;
}

/** The helpers `createFusilladeClient` returns. */
export interface FusilladeClient {
  /** The generated Connect clients, for everything the helpers do not cover (types in `gen`). */
  readonly raw: {
    readonly batch: Client<typeof BatchService>;
    readonly admin: Client<typeof AdminService>;
  };
  /** A file from templates, or from JSONL text sent in one message (small files; see uploadFile). */
  createFile(
    input:
      | { templates: TemplateInit[]; filename?: string }
      | ({ jsonl: string | Uint8Array } & JsonlOptions),
  ): Promise<File>;
  /** A file from a JSONL file on disk or a byte stream, streamed in chunks (any size). */
  uploadFile(source: string | AsyncIterable<Uint8Array>, options: JsonlOptions): Promise<File>;
  getFile(fileId: string): Promise<File>;
  /** Starts a batch: one request per template of the file. */
  createBatch(fileId: string, options?: BatchOptions): Promise<Batch>;
  getBatch(batchId: string): Promise<Batch>;
  /** The batch's state and per-state counts. */
  getBatchStatus(batchId: string): Promise<BatchStatus>;
  /** The batch now, then at each change (at most every minIntervalMs), ending when it is terminal. */
  watchBatch(
    batchId: string,
    options?: { minIntervalMs?: number; signal?: AbortSignal },
  ): AsyncIterable<Batch>;
  /** The batch's requests, a page at a time, optionally only some states and models. */
  listRequests(
    batchId: string,
    filter?: { states?: RequestStateName[]; models?: string[]; pageSize?: number },
  ): AsyncIterable<Request[]>;
  /** One request with its attempts: by id (or its result line's "batch_req_…" id), or by batch and custom_id. */
  getRequest(
    key: { requestId: string } | { batchId: string; customId: string },
  ): Promise<{ request: Request; attempts: Attempt[] }>;
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
  /**
   * The limits, rates and use of the models your unfinished batches have work
   * for (or one batch's): why a batch is slow. Read-only; any token.
   */
  listModels(options?: { batchId?: string }): Promise<ModelLimit[]>;
  /** Closes the HTTP/2 connection (the process can then exit). */
  close(): void;
}

/** The transport of `options`, and how to close it. */
function transportOf(options: FusilladeClientOptions): { transport: Transport; close(): void } {
  if (options.transport) return { transport: options.transport, close: () => undefined };
  const interceptors: Interceptor[] = [];
  const token = options.token;
  if (token !== undefined && token !== "") {
    interceptors.push((next) => (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    });
  }
  const httpVersion = options.httpVersion ?? "2";
  const sessions = httpVersion === "2" ? new Http2SessionManager(options.baseUrl) : undefined;
  const transport = createConnectTransport({
    baseUrl: options.baseUrl,
    httpVersion,
    sessionManager: sessions,
    interceptors,
  });
  return { transport, close: () => sessions?.abort() };
}

/** A client of the control plane at `baseUrl`. */
export function createFusilladeClient(options: FusilladeClientOptions): FusilladeClient {
  const { transport, close } = transportOf(options);
  const batch = createClient(BatchService, transport);
  const admin = createClient(AdminService, transport);
  return {
    raw: { batch, admin },
    ...fileMethods(batch),
    ...batchMethods(batch),
    ...requestMethods(batch),
    close,
  };
}
