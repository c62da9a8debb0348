/** Fusillade records as OpenAI's file and batch objects (docs/openai-api.md). */
import { deleteTime } from "../domain/retention.js";
import type { BatchRecord } from "../storage/batches.js";
import type { FileRecord } from "../storage/files.js";
import { unixSeconds } from "./http.js";

/** Which result file of a batch an id names. */
export type ResultFile = "output" | "errors";

const RESULT_FILE_ID = /^(output|errors)-([0-9a-f-]{36})$/i;

/** The id of a batch's output or error file. */
export function resultFileId(kind: ResultFile, batchId: string): string {
  return `${kind}-${batchId}`;
}

/** The batch and kind a result file id names, or undefined for an input file id. */
export function parseResultFileId(id: string): { kind: ResultFile; batchId: string } | undefined {
  const m = RESULT_FILE_ID.exec(id);
  return m ? { kind: m[1]!.toLowerCase() as ResultFile, batchId: m[2]! } : undefined;
}

/** An input file as OpenAI's file object. */
export function fileObject(f: FileRecord) {
  return {
    id: f.id,
    object: "file",
    bytes: f.sizeBytes,
    created_at: unixSeconds(f.createdAt),
    filename: f.filename,
    purpose: "batch",
    status: "processed",
    status_details: null,
    expires_at: null,
  };
}

/**
 * A batch's output or error file as a file object (read on demand: no size). Made when the
 * batch finishes (its lines so far until then); it expires with the batch, at its
 * retention after that (`serverRetentionMs` when the batch has none of its own).
 */
export function resultFileObject(kind: ResultFile, b: BatchRecord, serverRetentionMs: number) {
  return {
    id: resultFileId(kind, b.id),
    object: "file",
    bytes: null,
    created_at: unixSeconds(b.finishedAt ?? b.createdAt),
    filename: `batch_${b.id}_${kind === "output" ? "output" : "error"}.jsonl`,
    purpose: "batch_output",
    status: "processed",
    status_details: null,
    expires_at: unixSeconds(deleteTime(b.finishedAt, b.retentionMs, serverRetentionMs) ?? null),
  };
}

/** A batch as OpenAI's batch object; `endpoint` is its requests' url. */
export function batchObject(b: BatchRecord, endpoint: string) {
  const c = b.counts;
  const failed = c.failed + c.canceled + c.expired;
  const finished = b.finishedAt;
  return {
    id: b.id,
    object: "batch",
    endpoint,
    errors: null,
    input_file_id: b.fileId,
    completion_window: b.completionWindow,
    // Fusillade's batch states are OpenAI's names (docs/openai-api.md: statuses).
    status: b.state,
    output_file_id: c.completed > 0 ? resultFileId("output", b.id) : null,
    error_file_id: failed > 0 ? resultFileId("errors", b.id) : null,
    created_at: unixSeconds(b.createdAt),
    // No validation phase: a batch runs from its creation.
    in_progress_at: unixSeconds(b.createdAt),
    expires_at: unixSeconds(b.expiresAt),
    finalizing_at: null,
    completed_at: b.state === "completed" ? unixSeconds(finished) : null,
    failed_at: null,
    expired_at: b.state === "expired" ? unixSeconds(finished) : null,
    cancelling_at: unixSeconds(b.cancellingAt),
    cancelled_at: b.state === "cancelled" ? unixSeconds(finished) : null,
    request_counts: { total: c.total, completed: c.completed, failed },
    metadata: b.metadata,
    // Extensions (docs/openai-api.md).
    priority: b.priority,
    max_retries: b.maxRetries,
  };
}
