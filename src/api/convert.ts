/**
 * Converters between domain records and proto messages. Proto types stop
 * here: handlers convert at the edge, in both directions.
 */
import { create } from "@bufbuild/protobuf";
import {
  type Duration,
  DurationSchema,
  type Timestamp,
  timestampDate,
  timestampFromDate,
} from "@bufbuild/protobuf/wkt";
import { bodyText } from "../domain/results.js";
import { deleteTime } from "../domain/retention.js";
import type {
  BatchState as DomainBatchState,
  RequestState as DomainRequestState,
} from "../domain/states.js";
import { openAiStatus } from "../domain/states.js";
import {
  type Batch,
  type BatchRequest,
  BatchRequestSchema,
  BatchSchema,
  BatchState,
  type File,
  FileSchema,
  type ModelLimit,
  ModelLimitSchema,
  type ModelShare,
  ModelShareSchema,
  type RequestCounts,
  RequestCountsSchema,
  RequestState,
} from "../gen/fusillade/v1/resources_pb.js";
import type { BatchCounts, BatchRecord } from "../storage/batches.js";
import type { ModelShareRecord } from "../storage/fair-share.js";
import type { FileRecord } from "../storage/files.js";
import type { ModelLimitRecord } from "../storage/model-limits.js";
import type { RequestRecord } from "../storage/requests.js";

/** A Date as a Timestamp; undefined stays unset. */
export function toTimestamp(d: Date | null | undefined): Timestamp | undefined {
  return d ? timestampFromDate(d) : undefined;
}

/** A Timestamp as a Date. */
export function fromTimestamp(t: Timestamp | undefined): Date | undefined {
  return t ? timestampDate(t) : undefined;
}

/** Milliseconds as a Duration. */
export function toDuration(ms: number): Duration {
  const seconds = Math.floor(ms / 1000);
  return create(DurationSchema, {
    seconds: BigInt(seconds),
    nanos: Math.round((ms - seconds * 1000) * 1e6),
  });
}

/** A Duration as milliseconds; undefined when unset. */
export function fromDuration(d: Duration | undefined): number | undefined {
  return d ? Number(d.seconds) * 1000 + Math.round(d.nanos / 1e6) : undefined;
}

const REQUEST_STATE_TO_PROTO: Record<DomainRequestState, RequestState> = {
  pending: RequestState.PENDING,
  leased: RequestState.LEASED,
  completed: RequestState.COMPLETED,
  failed: RequestState.FAILED,
  canceled: RequestState.CANCELED,
  expired: RequestState.EXPIRED,
};

const REQUEST_STATE_FROM_PROTO = new Map<RequestState, DomainRequestState>(
  Object.entries(REQUEST_STATE_TO_PROTO).map(([k, v]) => [v, k as DomainRequestState]),
);

/** A domain request state as its proto enum. */
export function toProtoRequestState(s: DomainRequestState): RequestState {
  return REQUEST_STATE_TO_PROTO[s];
}

/** A proto request state as the domain's; undefined for UNSPECIFIED or unknown values. */
export function fromProtoRequestState(s: RequestState): DomainRequestState | undefined {
  return REQUEST_STATE_FROM_PROTO.get(s);
}

const BATCH_STATE_TO_PROTO: Record<DomainBatchState, BatchState> = {
  in_progress: BatchState.IN_PROGRESS,
  completed: BatchState.COMPLETED,
  cancelling: BatchState.CANCELLING,
  cancelled: BatchState.CANCELLED,
  expired: BatchState.EXPIRED,
};

/** A domain batch state as its proto enum. */
export function toProtoBatchState(s: DomainBatchState): BatchState {
  return BATCH_STATE_TO_PROTO[s];
}

/** A file record as a proto File. */
export function toProtoFile(f: FileRecord): File {
  return create(FileSchema, {
    id: f.id,
    filename: f.filename,
    templateCount: BigInt(f.templateCount),
    sizeBytes: BigInt(f.sizeBytes),
    models: f.models,
    createTime: toTimestamp(f.createdAt),
  });
}

/** Batch counters as proto RequestCounts. */
export function toProtoCounts(c: BatchCounts): RequestCounts {
  return create(RequestCountsSchema, {
    total: BigInt(c.total),
    pending: BigInt(c.pending),
    inProgress: BigInt(c.inProgress),
    completed: BigInt(c.completed),
    failed: BigInt(c.failed),
    canceled: BigInt(c.canceled),
    expired: BigInt(c.expired),
  });
}

/** A batch record as a proto Batch; `retentionMs` is the server's (for delete_time). */
export function toProtoBatch(
  b: BatchRecord,
  retentionMs: number,
  shares: ModelShareRecord[] = [],
): Batch {
  const finished = b.finishedAt ?? undefined;
  return create(BatchSchema, {
    id: b.id,
    fileId: b.fileId ?? "",
    state: toProtoBatchState(b.state),
    openaiStatus: openAiStatus(b.state),
    metadata: b.metadata,
    completionWindow: b.completionWindow,
    counts: toProtoCounts(b.counts),
    retryPolicy: {
      maxRetries: b.maxRetries,
      initialBackoff: toDuration(b.initialBackoffMs),
      maxBackoff: toDuration(b.maxBackoffMs),
    },
    createTime: toTimestamp(b.createdAt),
    expireTime: toTimestamp(b.expiresAt),
    completeTime: b.state === "completed" ? toTimestamp(finished) : undefined,
    cancellingTime: toTimestamp(b.cancellingAt),
    cancelTime: b.state === "cancelled" ? toTimestamp(finished) : undefined,
    expiredTime: b.state === "expired" ? toTimestamp(finished) : undefined,
    finishTime: toTimestamp(finished),
    priority: b.priority,
    shares: shares.map(toProtoShare),
    deleteTime: toTimestamp(deleteTime(b.finishedAt, b.retentionMs, retentionMs)),
  });
}

/** A model's limit, rates and use; `defaultLimit` for a model without its own limit. */
export function toProtoModelLimit(m: ModelLimitRecord, defaultLimit: number): ModelLimit {
  return create(ModelLimitSchema, {
    model: m.model,
    limit: m.limit ?? defaultLimit,
    isDefault: m.limit === null,
    inFlight: m.inFlight,
    slotsGranted: m.slotsGranted,
    pending: BigInt(m.pending),
    running: m.running,
    queued: BigInt(m.queued),
    holdUntilTime: toTimestamp(m.holdUntil),
    rpm: m.rpm ?? undefined,
    tpm: m.tpm ?? undefined,
    pacing: m.pacing ?? undefined,
  });
}

/** A batch's share of a model (docs/fair-share.md). */
export function toProtoShare(s: ModelShareRecord): ModelShare {
  return create(ModelShareSchema, {
    model: s.model,
    inFlight: s.inFlight,
    modelInFlight: s.modelInFlight,
    limit: s.limit,
    activeBatches: s.activeBatches,
    running: s.running,
    modelRunning: s.modelRunning,
    pacing: s.pacing ?? undefined,
  });
}

/** A stored body as RequestResponse's `body` text, and its bytes when they are not UTF-8. */
function protoBody(b: Uint8Array | null): { body: string; bodyBytes?: Uint8Array } {
  if (b === null) return { body: "" };
  const { text, exact } = bodyText(b);
  return exact ? { body: text } : { body: text, bodyBytes: b };
}

/** A request record as a proto BatchRequest (never carries the API key). */
export function toProtoRequest(r: RequestRecord): BatchRequest {
  return create(BatchRequestSchema, {
    id: r.id,
    batchId: r.batchId,
    customId: r.customId ?? "",
    line: r.line,
    model: r.model,
    state: toProtoRequestState(r.state),
    attempt: r.attempt,
    method: r.method,
    url: r.url,
    response:
      r.responseStatus === null
        ? undefined
        : {
            statusCode: r.responseStatus,
            ...protoBody(r.responseBody),
            headers: r.responseHeaders ?? {},
          },
    error: r.errorCode === null ? undefined : { code: r.errorCode, message: r.errorMessage ?? "" },
    createTime: toTimestamp(r.createdAt),
    updateTime: toTimestamp(r.updatedAt),
    notBeforeTime: toTimestamp(r.notBefore),
    finishTime: toTimestamp(r.finishedAt),
  });
}
