/**
 * What the client hands its user: plain objects of strings, numbers, Dates
 * and nulls (no bigint: no count or size of Fusillade passes 2^53; no enum
 * numbers; no `$typeName`), and the converters from the generated messages.
 * Field names are the proto's, in camelCase.
 */
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import type {
  GetBatchStatusResponse,
  RequestAttempt,
} from "../gen/fusillade/v1/batch_service_pb.js";
import {
  type Batch as BatchMessage,
  type BatchRequest as BatchRequestMessage,
  BatchState,
  type File as FileMessage,
  type ModelLimit as ModelLimitMessage,
  type ModelShare as ModelShareMessage,
  type RequestCounts,
  RequestState,
} from "../gen/fusillade/v1/resources_pb.js";

/** A batch's state, as the CLI and the API's JSON name it. */
export type BatchStateName = "in_progress" | "completed" | "cancelling" | "cancelled" | "expired";

/** A request's state, as the CLI and the API's JSON name it. */
export type RequestStateName =
  | "pending"
  | "in_progress"
  | "completed"
  | "failed"
  | "cancelled"
  | "expired";

const BATCH_STATE_NAMES: Readonly<Record<BatchState, BatchStateName | "unspecified">> = {
  [BatchState.UNSPECIFIED]: "unspecified",
  [BatchState.IN_PROGRESS]: "in_progress",
  [BatchState.COMPLETED]: "completed",
  [BatchState.CANCELLING]: "cancelling",
  [BatchState.CANCELLED]: "cancelled",
  [BatchState.EXPIRED]: "expired",
};

/** Request states by the names users type (the CLI's --state takes the same). */
export const REQUEST_STATE_BY_NAME: Readonly<Record<RequestStateName, RequestState>> = {
  pending: RequestState.PENDING,
  in_progress: RequestState.LEASED,
  completed: RequestState.COMPLETED,
  failed: RequestState.FAILED,
  cancelled: RequestState.CANCELED,
  expired: RequestState.EXPIRED,
};

const requestStateName = (s: RequestState): RequestStateName =>
  (Object.entries(REQUEST_STATE_BY_NAME).find(([, v]) => v === s)?.[0] ??
    "pending") as RequestStateName;

const date = (t: Timestamp | undefined): Date | null => (t ? timestampDate(t) : null);
const ms = (d: { seconds: bigint; nanos: number } | undefined): number | null =>
  d ? Number(d.seconds) * 1000 + Math.round(d.nanos / 1e6) : null;

/** How many requests of a batch (or of a model of it) are in each state. */
export interface Counts {
  total: number;
  pending: number;
  inProgress: number;
  completed: number;
  failed: number;
  cancelled: number;
  expired: number;
}

export function countsOf(c: RequestCounts | undefined): Counts {
  return {
    total: Number(c?.total ?? 0n),
    pending: Number(c?.pending ?? 0n),
    inProgress: Number(c?.inProgress ?? 0n),
    completed: Number(c?.completed ?? 0n),
    failed: Number(c?.failed ?? 0n),
    cancelled: Number(c?.canceled ?? 0n),
    expired: Number(c?.expired ?? 0n),
  };
}

/** A file: an immutable list of request templates. */
export interface File {
  id: string;
  filename: string;
  templateCount: number;
  sizeBytes: number;
  models: string[];
  createTime: Date | null;
}

export function fileOf(f: FileMessage): File {
  return {
    id: f.id,
    filename: f.filename,
    templateCount: Number(f.templateCount),
    sizeBytes: Number(f.sizeBytes),
    models: [...f.models],
    createTime: date(f.createTime),
  };
}

/** A running batch's share of one model now (docs/fair-share.md). */
export interface ModelShare {
  model: string;
  /** This batch's requests of the model running now. */
  running: number;
  /** The model's requests running now, every batch's: compare with `limit`. */
  modelRunning: number;
  limit: number;
  /** This batch's claims: running, or buffered at a dispatcher for a slot. */
  inFlight: number;
  modelInFlight: number;
  activeBatches: number;
}

export function shareOf(s: ModelShareMessage): ModelShare {
  return {
    model: s.model,
    running: s.running,
    modelRunning: s.modelRunning,
    limit: s.limit,
    inFlight: s.inFlight,
    modelInFlight: s.modelInFlight,
    activeBatches: s.activeBatches,
  };
}

/** A batch: one run of every template of a file. */
export interface Batch {
  id: string;
  fileId: string;
  state: BatchStateName | "unspecified";
  /** The state in OpenAI Batch API terms ("validating", "in_progress", "finalizing", …). */
  openaiStatus: string;
  metadata: Record<string, string>;
  completionWindow: string;
  counts: Counts;
  retryPolicy: {
    maxRetries: number | null;
    initialBackoffMs: number | null;
    maxBackoffMs: number | null;
  };
  priority: number;
  /** While it runs: its share of each model it has work for. */
  shares: ModelShare[];
  createTime: Date | null;
  expireTime: Date | null;
  completeTime: Date | null;
  cancellingTime: Date | null;
  cancelTime: Date | null;
  expiredTime: Date | null;
  finishTime: Date | null;
}

export function batchOf(b: BatchMessage): Batch {
  return {
    id: b.id,
    fileId: b.fileId,
    state: BATCH_STATE_NAMES[b.state] ?? "unspecified",
    openaiStatus: b.openaiStatus,
    metadata: { ...b.metadata },
    completionWindow: b.completionWindow,
    counts: countsOf(b.counts),
    retryPolicy: {
      maxRetries: b.retryPolicy?.maxRetries ?? null,
      initialBackoffMs: ms(b.retryPolicy?.initialBackoff),
      maxBackoffMs: ms(b.retryPolicy?.maxBackoff),
    },
    priority: b.priority,
    shares: b.shares.map(shareOf),
    createTime: date(b.createTime),
    expireTime: date(b.expireTime),
    completeTime: date(b.completeTime),
    cancellingTime: date(b.cancellingTime),
    cancelTime: date(b.cancelTime),
    expiredTime: date(b.expiredTime),
    finishTime: date(b.finishTime),
  };
}

/** A batch's state and counts (GetBatchStatus: cheaper than getBatch). */
export interface BatchStatus {
  batchId: string;
  state: BatchStateName | "unspecified";
  openaiStatus: string;
  counts: Counts;
  priority: number;
  shares: ModelShare[];
}

export function statusOf(s: GetBatchStatusResponse): BatchStatus {
  return {
    batchId: s.batchId,
    state: BATCH_STATE_NAMES[s.state] ?? "unspecified",
    openaiStatus: s.openaiStatus,
    counts: countsOf(s.counts),
    priority: s.priority,
    shares: s.shares.map(shareOf),
  };
}

/** One request of a batch. */
export interface Request {
  id: string;
  batchId: string;
  customId: string | null;
  /** 1-based line of its template in the file. */
  line: number;
  model: string;
  state: RequestStateName;
  /** Attempts started so far. */
  attempt: number;
  method: string;
  url: string;
  response: {
    statusCode: number;
    /** The body as text (see responseText for bodies that are not UTF-8). */
    body: string;
    /** The exact bytes, set only when the body is not valid UTF-8. */
    bodyBytes: Uint8Array | null;
    headers: Record<string, string>;
  } | null;
  error: { code: string; message: string } | null;
  createTime: Date | null;
  updateTime: Date | null;
  notBeforeTime: Date | null;
  finishTime: Date | null;
}

export function requestOf(r: BatchRequestMessage): Request {
  return {
    id: r.id,
    batchId: r.batchId,
    customId: r.customId === "" ? null : r.customId,
    line: r.line,
    model: r.model,
    state: requestStateName(r.state),
    attempt: r.attempt,
    method: r.method,
    url: r.url,
    response: r.response
      ? {
          statusCode: r.response.statusCode,
          body: r.response.body,
          bodyBytes: r.response.bodyBytes.length > 0 ? r.response.bodyBytes : null,
          headers: { ...r.response.headers },
        }
      : null,
    error: r.error ? { code: r.error.code, message: r.error.message } : null,
    createTime: date(r.createTime),
    updateTime: date(r.updateTime),
    notBeforeTime: date(r.notBeforeTime),
    finishTime: date(r.finishTime),
  };
}

/** One attempt of a request. */
export interface Attempt {
  attempt: number;
  startTime: Date | null;
  endTime: Date | null;
  /** How it ended: "retried" (a retriable failure, or a claim given back), a final state, or "running". */
  outcome: "running" | "retried" | RequestStateName;
  /** The upstream's status that ended it; null when none. */
  statusCode: number | null;
  /** The error that ended it; null when none. */
  errorCode: string | null;
}

export function attemptOf(a: RequestAttempt): Attempt {
  return {
    attempt: a.attempt,
    startTime: date(a.startTime),
    endTime: date(a.endTime),
    outcome:
      a.outcome === RequestState.UNSPECIFIED
        ? "running"
        : a.outcome === RequestState.PENDING
          ? "retried"
          : requestStateName(a.outcome),
    statusCode: a.statusCode === 0 ? null : a.statusCode,
    errorCode: a.errorCode === "" ? null : a.errorCode,
  };
}

/** A model's limit, rates and what runs now. */
export interface ModelLimit {
  model: string;
  limit: number;
  isDefault: boolean;
  /** Requests running now (claims holding a granted slot): what the limit bounds. */
  running: number;
  /** Requests waiting to run: pending, and claims buffered at a dispatcher. */
  queued: number;
  /** Claims: running or buffered. */
  inFlight: number;
  slotsGranted: number;
  pending: number;
  /** Grants are held back until then after an upstream 429. */
  holdUntil: Date | null;
  rpm: number | null;
  tpm: number | null;
  /** How the dispatchers pace it now, summed (docs/pacing.md); null before any call. */
  pacing: {
    /** "held", "backing_off", "paced" or "free": the slowest reason. */
    mode: string;
    concurrency: number;
    callsLastMinute: number;
    throttledLastMinute: number;
    dispatchers: number;
  } | null;
}

export function modelLimitOf(l: ModelLimitMessage): ModelLimit {
  return {
    model: l.model,
    limit: l.limit,
    isDefault: l.isDefault,
    running: l.running,
    queued: Number(l.queued),
    inFlight: l.inFlight,
    slotsGranted: l.slotsGranted,
    pending: Number(l.pending),
    holdUntil: date(l.holdUntilTime),
    rpm: l.rpm ?? null,
    tpm: l.tpm ?? null,
    pacing: l.pacing
      ? {
          mode: l.pacing.mode,
          concurrency: l.pacing.concurrency,
          callsLastMinute: l.pacing.callsLastMinute,
          throttledLastMinute: l.pacing.throttledLastMinute,
          dispatchers: l.pacing.dispatchers,
        }
      : null,
  };
}

/** Whether no request of the batch will change again. */
export function isBatchTerminal(state: BatchStateName | "unspecified"): boolean {
  return state === "completed" || state === "cancelled" || state === "expired";
}

/** A request's response body as text ("" without a response). */
export function responseText(response: { body: string } | null | undefined): string {
  return response?.body ?? "";
}
