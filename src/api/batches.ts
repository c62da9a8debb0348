/**
 * BatchService batch methods: create, read, list, cancel, retry, list
 * requests, one request with its attempts.
 */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { principalOf, scopeOf, type TenantScope } from "../auth/principal.js";
import { parseDuration } from "../domain/duration.js";
import { InvalidArgumentError } from "../domain/errors.js";
import { requestIdOf } from "../domain/results.js";
import { parseRetention } from "../domain/retention.js";
import { MAX_BACKOFF_MS } from "../domain/retry-policy.js";
import { openAiStatus, type RequestState } from "../domain/states.js";
import { validateText } from "../domain/templates.js";
import {
  type BatchService,
  CancelBatchResponseSchema,
  type CreateBatchRequest,
  CreateBatchResponseSchema,
  DeleteBatchResponseSchema,
  GetBatchBreakdownResponseSchema,
  GetBatchResponseSchema,
  GetBatchStatusResponseSchema,
  type GetRequestRequest,
  GetRequestResponseSchema,
  ListBatchesResponseSchema,
  ListBatchRequestsResponseSchema,
  RequestAttemptSchema,
  type RetryBatchRequest,
  RetryBatchResponseSchema,
} from "../gen/fusillade/v1/batch_service_pb.js";
import type {
  RequestState as ProtoRequestState,
  RetryPolicy,
} from "../gen/fusillade/v1/resources_pb.js";
import { parseTraceparent } from "../http/trace-context.js";
import { batchBreakdown } from "../storage/batch-breakdown.js";
import {
  type BatchRecord,
  cancelBatch,
  createBatch,
  deleteBatch,
  getBatch,
  listBatches,
  retryBatch,
} from "../storage/batches.js";
import { sharesOf } from "../storage/fair-share.js";
import { WORK_CHANNEL } from "../storage/notifications.js";
import { pageSize } from "../storage/pages.js";
import { getRequestWithAttempts } from "../storage/request-history.js";
import { listRequests } from "../storage/requests.js";
import {
  fromDuration,
  fromProtoRequestState,
  toProtoBatch,
  toProtoBatchState,
  toProtoCounts,
  toProtoRequest,
  toProtoRequestState,
  toProtoShare,
  toTimestamp,
} from "./convert.js";
import type { ApiDeps } from "./deps.js";

/** Longest completion window accepted. */
const MAX_COMPLETION_WINDOW_MS = 30 * 24 * 3600 * 1000;
/** Most metadata pairs a batch may carry (OpenAI's limit, as are 64/512 below). */
const MAX_METADATA_PAIRS = 16;
/** Most retries a batch may ask for. */
const MAX_RETRIES_LIMIT = 100;

/** Parses a completion window; "" gives `fallback`. */
export function completionWindowMs(text: string, field: string): number {
  const ms = parseDuration(text);
  if (ms === undefined || ms <= 0) {
    throw new InvalidArgumentError(
      field,
      `must be a duration such as "24h" or "90m", got ${JSON.stringify(text)}`,
    );
  }
  if (ms > MAX_COMPLETION_WINDOW_MS)
    throw new InvalidArgumentError(field, "must be at most 30 days");
  return ms;
}

/** Proto states to domain states; UNSPECIFIED or unknown values are an error. */
export function statesFilter(states: ProtoRequestState[], field = "states"): RequestState[] {
  return states.map((s) => {
    const d = fromProtoRequestState(s);
    if (d === undefined) throw new InvalidArgumentError(field, `unknown request state ${s}`);
    return d;
  });
}

function retryPolicy(p: RetryPolicy | undefined, deps: ApiDeps) {
  const c = deps.config;
  const maxRetries = p?.maxRetries ?? c.defaultMaxRetries;
  if (maxRetries < 0 || maxRetries > MAX_RETRIES_LIMIT) {
    throw new InvalidArgumentError(
      "retry_policy.max_retries",
      `must be between 0 and ${MAX_RETRIES_LIMIT}`,
    );
  }
  const initial = fromDuration(p?.initialBackoff) ?? c.defaultInitialBackoffMs;
  const max = fromDuration(p?.maxBackoff) ?? c.defaultMaxBackoffMs;
  if (initial < 0)
    throw new InvalidArgumentError("retry_policy.initial_backoff", "must not be negative");
  for (const [field, ms] of [
    ["retry_policy.initial_backoff", initial],
    ["retry_policy.max_backoff", max],
  ] as const) {
    if (ms > MAX_BACKOFF_MS) {
      throw new InvalidArgumentError(
        field,
        `must be at most ${MAX_BACKOFF_MS} ms (about 24 days), got ${ms} ms`,
      );
    }
  }
  if (max < initial) {
    throw new InvalidArgumentError(
      "retry_policy.max_backoff",
      "must not be less than initial_backoff",
    );
  }
  return { maxRetries, initialBackoffMs: initial, maxBackoffMs: max };
}

/**
 * Starts a batch from a file (CreateBatch, and POST /v1/batches): checks the
 * window, metadata, priority, retention and retry policy, creates it, logs it, and
 * wakes this replica's claims for its models.
 */
export async function startBatch(
  deps: ApiDeps,
  scope: TenantScope,
  req: Pick<
    CreateBatchRequest,
    | "fileId"
    | "requestId"
    | "completionWindow"
    | "metadata"
    | "priority"
    | "retryPolicy"
    | "retention"
  >,
  traceId?: string,
): Promise<BatchRecord> {
  if (req.fileId === "") throw new InvalidArgumentError("file_id", "is required");
  const window =
    req.completionWindow === "" ? deps.config.defaultCompletionWindow : req.completionWindow;
  const windowMs = completionWindowMs(window, "completion_window");
  const entries = Object.entries(req.metadata);
  if (entries.length > MAX_METADATA_PAIRS) {
    throw new InvalidArgumentError("metadata", `must have at most ${MAX_METADATA_PAIRS} keys`);
  }
  for (const [k, v] of entries) {
    if (k === "" || k.length > 64)
      throw new InvalidArgumentError("metadata", "keys must be 1 to 64 characters");
    validateText(k, "metadata");
    if (v.length > 512)
      throw new InvalidArgumentError(`metadata.${k}`, "must be at most 512 characters");
    validateText(v, `metadata.${k}`);
  }
  if (!Number.isInteger(req.priority) || req.priority < -100 || req.priority > 100) {
    throw new InvalidArgumentError("priority", "must be an integer between -100 and 100");
  }
  const retentionMs = req.retention === "" ? null : parseRetention(req.retention);
  if (retentionMs === undefined) {
    throw new InvalidArgumentError(
      "retention",
      "must be a duration such as 7d or 12h, or 0 to keep the batch until it is deleted",
    );
  }
  const { batch, created, models } = await createBatch(deps.db, {
    fileId: req.fileId,
    scope,
    idempotencyKey: req.requestId === "" ? null : validateText(req.requestId, "request_id"),
    completionWindow: window,
    completionWindowMs: windowMs,
    metadata: req.metadata,
    priority: req.priority,
    retentionMs,
    ...retryPolicy(req.retryPolicy, deps),
  });
  if (created) deps.lifecycle?.created(batch, traceId);
  // This replica's next claims see the new batch at once (fair share's
  // lone-batch shortcut is dropped); the others hear it through LISTEN.
  for (const m of models) deps.notifications.announce(WORK_CHANNEL, m);
  return batch;
}

/** The batch methods of BatchService (the streaming ones are in streams.ts). */
/** What RetryBatch asks for, checked (INVALID_ARGUMENT naming the field). */
function retryOptions(req: RetryBatchRequest) {
  return {
    requestIds: req.requestIds.map((id, i) => requestIdOf(validateText(id, `request_ids[${i}]`))),
    customIds: req.customIds.map((id, i) => validateText(id, `custom_ids[${i}]`)),
    completionWindow:
      req.completionWindow === ""
        ? null
        : {
            text: req.completionWindow,
            ms: completionWindowMs(req.completionWindow, "completion_window"),
          },
    resume: req.resume,
  };
}

/** GetRequest's key: the request id (a result line's batch_req_ id too), or batch and custom id. */
function requestKey(req: GetRequestRequest) {
  return req.requestId !== ""
    ? { requestId: requestIdOf(validateText(req.requestId, "request_id")) }
    : {
        batchId: required(req.batchId, "batch_id"),
        customId: validateText(required(req.customId, "custom_id"), "custom_id"),
      };
}

/** A request and its attempts on the wire. */
function toProtoRequestWithAttempts({
  request,
  attempts,
}: Awaited<ReturnType<typeof getRequestWithAttempts>>) {
  return create(GetRequestResponseSchema, {
    request: toProtoRequest(request),
    attempts: attempts.map((a) =>
      create(RequestAttemptSchema, {
        attempt: a.attempt,
        startTime: toTimestamp(a.startedAt),
        endTime: toTimestamp(a.endedAt),
        outcome: a.outcome === null ? undefined : toProtoRequestState(a.outcome),
        statusCode: a.statusCode ?? 0,
        errorCode: a.errorCode ?? "",
      }),
    ),
  });
}

/** A batch's breakdown on the wire. */
function toProtoBreakdown({ models, errors }: Awaited<ReturnType<typeof batchBreakdown>>) {
  return create(GetBatchBreakdownResponseSchema, {
    models: models.map((m) => ({
      model: m.model,
      counts: toProtoCounts(m.counts),
      holdUntilTime: toTimestamp(m.holdUntil),
    })),
    errors: errors.map((e) => ({
      code: e.code,
      statusCode: e.statusCode ?? 0,
      failed: BigInt(e.failed),
      retrying: BigInt(e.retrying),
      exampleMessage: e.exampleMessage,
    })),
  });
}

export function batchMethods(
  deps: ApiDeps,
): Pick<
  ServiceImpl<typeof BatchService>,
  | "createBatch"
  | "getBatch"
  | "deleteBatch"
  | "getBatchStatus"
  | "listBatches"
  | "cancelBatch"
  | "retryBatch"
  | "listBatchRequests"
  | "getRequest"
  | "getBatchBreakdown"
> {
  const { db } = deps;
  return {
    async createBatch(req, ctx) {
      // The caller's trace (W3C traceparent), when it sent one, goes into the log line.
      const trace = parseTraceparent(ctx.requestHeader.get("traceparent"));
      const batch = await startBatch(deps, scopeOf(principalOf(ctx)), req, trace?.traceId);
      return create(CreateBatchResponseSchema, {
        batch: toProtoBatch(batch, deps.config.retentionMs),
      });
    },

    async deleteBatch(req, ctx) {
      await deleteBatch(db, scopeOf(principalOf(ctx)), req.batchId);
      deps.log.info({ batchId: req.batchId }, "batch deleted");
      return create(DeleteBatchResponseSchema, {});
    },

    async getBatch(req, ctx) {
      const b = await getBatch(db, scopeOf(principalOf(ctx)), req.batchId);
      return create(GetBatchResponseSchema, {
        batch: toProtoBatch(
          b,
          deps.config.retentionMs,
          await sharesOf(db, b, deps.config.defaultLimit),
        ),
      });
    },

    async getBatchStatus(req, ctx) {
      const b = await getBatch(db, scopeOf(principalOf(ctx)), req.batchId);
      return create(GetBatchStatusResponseSchema, {
        batchId: b.id,
        state: toProtoBatchState(b.state),
        openaiStatus: openAiStatus(b.state),
        counts: toProtoCounts(b.counts),
        shares: (await sharesOf(db, b, deps.config.defaultLimit)).map(toProtoShare),
        priority: b.priority,
      });
    },

    async listBatches(req, ctx) {
      const page = await listBatches(db, scopeOf(principalOf(ctx)), {
        limit: pageSize(req.pageSize),
        pageToken: req.pageToken,
        fileId: req.fileId,
      });
      return create(ListBatchesResponseSchema, {
        batches: page.batches.map((b) => toProtoBatch(b, deps.config.retentionMs)),
        nextPageToken: page.nextPageToken,
      });
    },

    async cancelBatch(req, ctx) {
      const batch = await cancelBatch(db, scopeOf(principalOf(ctx)), req.batchId);
      deps.lifecycle?.cancelled(batch);
      return create(CancelBatchResponseSchema, {
        batch: toProtoBatch(batch, deps.config.retentionMs),
      });
    },

    async retryBatch(req, ctx) {
      const { batch, retried } = await retryBatch(
        db,
        scopeOf(principalOf(ctx)),
        req.batchId,
        retryOptions(req),
      );
      return create(RetryBatchResponseSchema, {
        batch: toProtoBatch(batch, deps.config.retentionMs),
        retriedCount: BigInt(retried),
      });
    },

    async listBatchRequests(req, ctx) {
      await getBatch(db, scopeOf(principalOf(ctx)), req.batchId); // NOT_FOUND for an unknown batch
      const page = await listRequests(db, {
        batchId: req.batchId,
        states: statesFilter(req.states),
        models: req.models.map((m, i) => validateText(m, `models[${i}]`)),
        limit: pageSize(req.pageSize),
        maxBytes: deps.config.maxPageBytes,
        pageToken: req.pageToken,
      });
      return create(ListBatchRequestsResponseSchema, {
        requests: page.requests.map(toProtoRequest),
        nextPageToken: page.nextPageToken,
      });
    },

    async getRequest(req, ctx) {
      const found = await getRequestWithAttempts(db, scopeOf(principalOf(ctx)), requestKey(req));
      return toProtoRequestWithAttempts(found);
    },

    async getBatchBreakdown(req, ctx) {
      await getBatch(db, scopeOf(principalOf(ctx)), req.batchId); // NOT_FOUND for an unknown batch
      if (req.maxErrors < 0 || req.maxErrors > 100) {
        throw new InvalidArgumentError("max_errors", "must be between 0 and 100");
      }
      return toProtoBreakdown(await batchBreakdown(db, req.batchId, req.maxErrors || 5));
    },
  };
}

function required(value: string, field: string): string {
  if (value === "") {
    throw new InvalidArgumentError(field, "is required (or name the request by request_id)");
  }
  return value;
}
