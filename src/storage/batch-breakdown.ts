/**
 * A batch's requests broken down by model and by error, for progress
 * displays: what is left per model (an ETA per model), which models are
 * held back after a 429, and why requests fail.
 */
import type { RequestState } from "../domain/states.js";
import type { BatchCounts } from "./batches.js";
import type { Db } from "./db.js";

export interface ModelBreakdownRecord {
  model: string;
  counts: BatchCounts;
  holdUntil: Date | null;
}

export interface ErrorCountRecord {
  code: string;
  statusCode: number | null;
  failed: number;
  retrying: number;
  exampleMessage: string;
}

/**
 * BatchBreakdownByModel: request counts per model and state, with the
 * model's hold. Params: batch id. One pass over the batch's requests, so
 * a display asks for it every few seconds, not for every progress message.
 */
const BATCH_BREAKDOWN_BY_MODEL = `
  SELECT r.model, r.state, count(*)::int AS n,
    (SELECT m.hold_until FROM model_limits m WHERE m.model = r.model AND m.hold_until > now())
      AS hold_until
  FROM requests r WHERE r.batch_id = $1
  GROUP BY r.model, r.state ORDER BY r.model`;

/**
 * BatchErrorCounts: failed requests and those pending again after an
 * error, grouped by error code and status, commonest first. Params: batch
 * id, most groups.
 */
const BATCH_ERROR_COUNTS = `
  SELECT error_code AS code, response_status AS status_code,
    count(*) FILTER (WHERE state = 'failed')::int AS failed,
    count(*) FILTER (WHERE state = 'pending')::int AS retrying,
    min(left(error_message, 300)) AS example_message
  FROM requests
  WHERE batch_id = $1 AND error_code IS NOT NULL AND state IN ('failed', 'pending')
  GROUP BY error_code, response_status
  ORDER BY count(*) DESC, error_code LIMIT $2`;

const zero = (): BatchCounts => ({
  total: 0,
  pending: 0,
  inProgress: 0,
  completed: 0,
  failed: 0,
  canceled: 0,
  expired: 0,
});

/** The batch's breakdown (the batch must exist: callers check). */
export async function batchBreakdown(
  db: Db,
  batchId: string,
  maxErrors: number,
): Promise<{ models: ModelBreakdownRecord[]; errors: ErrorCountRecord[] }> {
  const byModel = await db.query<{
    model: string;
    state: RequestState;
    n: number;
    hold_until: Date | null;
  }>(BATCH_BREAKDOWN_BY_MODEL, [batchId]);
  const models = new Map<string, ModelBreakdownRecord>();
  for (const row of byModel.rows) {
    let m = models.get(row.model);
    if (!m) {
      m = { model: row.model, counts: zero(), holdUntil: row.hold_until };
      models.set(row.model, m);
    }
    m.counts.total += row.n;
    const key = row.state === "leased" ? "inProgress" : row.state;
    m.counts[key] += row.n;
  }
  const errors = await db.query<{
    code: string;
    status_code: number | null;
    failed: number;
    retrying: number;
    example_message: string | null;
  }>(BATCH_ERROR_COUNTS, [batchId, maxErrors]);
  return {
    models: [...models.values()],
    errors: errors.rows.map((e) => ({
      code: e.code,
      statusCode: e.status_code,
      failed: e.failed,
      retrying: e.retrying,
      exampleMessage: e.example_message ?? "",
    })),
  };
}
