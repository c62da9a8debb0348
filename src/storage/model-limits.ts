/** Model limits as stored, with current usage, for AdminService. */
import { type TenantScope, tenantParam } from "../auth/principal.js";
import type { Db } from "./db.js";
import { type FleetPacing, type PacingRow, pacingOf, runningNow } from "./pacing-views.js";
import { decodePageToken, encodePageToken } from "./pages.js";

export interface ModelLimitRecord {
  model: string;
  /** null: the server default applies. */
  limit: number | null;
  /** Claims: running, or buffered at a dispatcher for a free slot. */
  inFlight: number;
  /** Σ slots of unexpired grants. */
  slotsGranted: number;
  /** Claims that hold a granted slot: min(inFlight, slotsGranted). */
  running: number;
  pending: number;
  /** Waiting to run: pending, plus claims buffered for a slot. */
  queued: number;
  holdUntil: Date | null;
  /** Requests per minute held fleet-wide; null: no rate. */
  rpm: number | null;
  /** Tokens per minute held fleet-wide; null: no rate. */
  tpm: number | null;
  /** How the dispatchers holding grants pace it, summed; null: none has said. */
  pacing: FleetPacing | null;
}

/**
 * A change to a model's limits: each field undefined leaves it as it is,
 * null removes it (the limit: back to the server default).
 */
export interface ModelLimitChange {
  limit?: number | null;
  rpm?: number | null;
  tpm?: number | null;
}

interface Row {
  model: string;
  max_in_flight: number | null;
  hold_until: Date | null;
  rpm: number | null;
  tpm: number | null;
  in_flight: number;
  slots_granted: number;
  pending: string;
  pacing: PacingRow | null;
}

const SELECT_WITH_USAGE = `
  SELECT m.model, m.max_in_flight, m.rpm, m.tpm, CASE WHEN m.hold_until > now() THEN m.hold_until END AS hold_until,
    (SELECT count(*)::int FROM requests r WHERE r.model = m.model AND r.state = 'leased') AS in_flight,
    (SELECT coalesce(sum(s.slots), 0)::int FROM slot_grants s
      WHERE s.model = m.model AND s.expires_at > now()) AS slots_granted,
    (SELECT count(*) FROM requests r WHERE r.model = m.model AND r.state = 'pending') AS pending,
    ${pacingOf("m.model")} AS pacing
  FROM model_limits m`;

function toRecord(r: Row): ModelLimitRecord {
  const { running, pacing } = runningNow(r.in_flight, r.slots_granted, r.pacing);
  return {
    model: r.model,
    limit: r.max_in_flight,
    inFlight: r.in_flight,
    slotsGranted: r.slots_granted,
    running,
    pending: Number(r.pending),
    queued: Number(r.pending) + r.in_flight - running,
    holdUntil: r.hold_until,
    rpm: r.rpm,
    tpm: r.tpm,
    pacing,
  };
}

/**
 * ModelLimitsSet: changes a model's limit and rates ($2, $4, $6: whether to
 * set each; $3, $5, $7: the values, null removes) and wakes lease waiters:
 * a raised limit is used at once; a lowered one stops new grants at once
 * (grants read it under the row's lock).
 */
const MODEL_LIMITS_SET = `
  INSERT INTO model_limits AS m (model, max_in_flight, rpm, tpm, updated_at)
  VALUES ($1, CASE WHEN $2 THEN $3::integer END, CASE WHEN $4 THEN $5::integer END,
    CASE WHEN $6 THEN $7::integer END, now())
  ON CONFLICT (model) DO UPDATE SET
    max_in_flight = CASE WHEN $2 THEN excluded.max_in_flight ELSE m.max_in_flight END,
    rpm = CASE WHEN $4 THEN excluded.rpm ELSE m.rpm END,
    tpm = CASE WHEN $6 THEN excluded.tpm ELSE m.tpm END,
    updated_at = now()`;

/** Applies `change` to a model's limits (see {@link ModelLimitChange}); answers them with usage. */
export async function setModelLimit(
  db: Db,
  model: string,
  change: ModelLimitChange,
): Promise<ModelLimitRecord> {
  await db.tx(async (q) => {
    await q.query(MODEL_LIMITS_SET, [
      model,
      change.limit !== undefined,
      change.limit ?? null,
      change.rpm !== undefined,
      change.rpm ?? null,
      change.tpm !== undefined,
      change.tpm ?? null,
    ]);
    await q.query(`SELECT pg_notify('fusillade_work', $1), pg_notify('fusillade_limits', $1)`, [
      model,
    ]);
  });
  const { rows } = await db.query<Row>(`${SELECT_WITH_USAGE} WHERE m.model = $1`, [model]);
  return toRecord(rows[0]!);
}

/** Models in name order, with usage. */
export async function listModelLimits(
  db: Db,
  limit: number,
  pageToken: string,
): Promise<{ limits: ModelLimitRecord[]; nextPageToken: string }> {
  const after = decodePageToken(pageToken, 1);
  const { rows } = await db.query<Row>(
    `${SELECT_WITH_USAGE} WHERE m.model > $1 ORDER BY m.model LIMIT $2`,
    [after?.[0] ?? "", limit + 1],
  );
  const page = rows.slice(0, limit);
  const last = page[page.length - 1];
  return {
    limits: page.map(toRecord),
    nextPageToken: rows.length > limit && last ? encodePageToken([last.model]) : "",
  };
}

/**
 * ModelLimitsOfBatches: the limits and use of the models named by the files
 * of the unfinished batches of a tenant (null: every tenant), or of one
 * batch ($2, finished or not). Reads the unfinished batches
 * (batches_unfinished_expiry) and their files; few models. Params: tenant,
 * batch id.
 */
const MODEL_LIMITS_OF_BATCHES = `${SELECT_WITH_USAGE}
  WHERE m.model IN (
    SELECT unnest(f.models) FROM batches b JOIN files f ON f.id = b.file_id
    WHERE ($1::text IS NULL OR b.tenant = $1)
      AND CASE WHEN $2::uuid IS NULL THEN b.finished_at IS NULL ELSE b.id = $2 END)
  ORDER BY m.model`;

/** The models the batches of `scope` have work for (or of `batchId`), with usage. */
export async function modelLimitsOfBatches(
  db: Db,
  scope: TenantScope,
  batchId: string | null,
): Promise<ModelLimitRecord[]> {
  const { rows } = await db.query<Row>(MODEL_LIMITS_OF_BATCHES, [tenantParam(scope), batchId]);
  return rows.map(toRecord);
}
