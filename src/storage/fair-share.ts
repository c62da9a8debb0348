/**
 * What fair share reads and sets outside the claim (docs/fair-share.md):
 * tenant weights, and a running batch's current share of its models.
 */
import { isBatchTerminal } from "../domain/states.js";
import type { BatchRecord } from "./batches.js";
import type { Db, Queryable } from "./db.js";

export interface TenantRecord {
  name: string;
  weight: number;
  isDefault: boolean;
  inFlight: number;
  activeBatches: number;
}

interface TenantRow {
  name: string;
  weight: number | null;
  in_flight: number;
  active_batches: number;
}

/** Tenants with a weight set or with unfinished batches (usage from the unfinished batches' counters). */
const TENANTS_WITH_USAGE = `
  WITH active AS (
    SELECT tenant, count(*)::int AS active_batches, sum(leased_count)::int AS in_flight
    FROM batches WHERE finished_at IS NULL GROUP BY tenant
  )
  SELECT coalesce(t.name, a.tenant) AS name, t.weight,
    coalesce(a.in_flight, 0) AS in_flight, coalesce(a.active_batches, 0) AS active_batches
  FROM tenants t FULL JOIN active a ON a.tenant = t.name`;

function toTenant(r: TenantRow): TenantRecord {
  return {
    name: r.name,
    weight: r.weight ?? 1,
    isDefault: r.weight === null,
    inFlight: r.in_flight,
    activeBatches: r.active_batches,
  };
}

/** Sets (or with null, clears) a tenant's weight; the next claim on any control plane reads it. */
export async function setTenantWeight(
  db: Db,
  tenant: string,
  weight: number | null,
): Promise<TenantRecord> {
  if (weight === null) await db.query(`DELETE FROM tenants WHERE name = $1`, [tenant]);
  else {
    await db.query(
      `INSERT INTO tenants (name, weight, updated_at) VALUES ($1, $2, now())
       ON CONFLICT (name) DO UPDATE SET weight = excluded.weight, updated_at = now()`,
      [tenant, weight],
    );
  }
  const { rows } = await db.query<TenantRow>(
    `SELECT * FROM (${TENANTS_WITH_USAGE}) x WHERE name = $1`,
    [tenant],
  );
  return toTenant(rows[0] ?? { name: tenant, weight: null, in_flight: 0, active_batches: 0 });
}

/** Every tenant with a weight or unfinished batches, by name. */
export async function listTenants(db: Db): Promise<TenantRecord[]> {
  const { rows } = await db.query<TenantRow>(`${TENANTS_WITH_USAGE} ORDER BY 1`);
  return rows.map(toTenant);
}

/** A running batch's share of one model's claims now. */
export interface ModelShareRecord {
  model: string;
  /** This batch's claims of the model (running or buffered). */
  inFlight: number;
  /** Every batch's claims of the model. */
  modelInFlight: number;
  limit: number;
  /** Running batches with pending requests of the model or claims of it. */
  activeBatches: number;
  /** This batch's pending requests of the model. */
  pending: number;
}

/**
 * BatchShares: per model the batch has pending or claimed requests of, its
 * claims, the model's claims and limit, and how many running batches share the
 * model. Reads the batch's own unfinished rows (requests_batch_state), the
 * model's claims (requests_leased) and one index probe per running batch
 * (requests_pending_batch). Params: batch id, default limit.
 */
const BATCH_SHARES = `
  WITH mine AS (
    SELECT model,
      count(*) FILTER (WHERE state = 'leased')::int AS in_flight,
      count(*) FILTER (WHERE state = 'pending')::int AS pending
    FROM requests WHERE batch_id = $1 AND state IN ('pending', 'leased')
    GROUP BY model
  )
  SELECT m.model, m.in_flight, m.pending,
    (SELECT count(*)::int FROM requests r WHERE r.model = m.model AND r.state = 'leased')
      AS model_in_flight,
    coalesce((SELECT l.max_in_flight FROM model_limits l WHERE l.model = m.model), $2)::int AS lim,
    (SELECT count(*)::int FROM batches b
      WHERE b.finished_at IS NULL AND b.cancelling_at IS NULL AND b.expires_at > now()
        AND (EXISTS (SELECT 1 FROM requests r WHERE r.model = m.model AND r.batch_id = b.id
              AND r.state = 'pending')
          OR EXISTS (SELECT 1 FROM requests r WHERE r.model = m.model AND r.batch_id = b.id
              AND r.state = 'leased'))) AS active_batches
  FROM mine m ORDER BY m.model`;

/** The shares of a batch that is still running (an empty list for a finished one). */
export async function batchShares(
  q: Queryable,
  batchId: string,
  defaultLimit: number,
): Promise<ModelShareRecord[]> {
  const { rows } = await q.query<{
    model: string;
    in_flight: number;
    pending: number;
    model_in_flight: number;
    lim: number;
    active_batches: number;
  }>(BATCH_SHARES, [batchId, defaultLimit]);
  return rows.map((r) => ({
    model: r.model,
    inFlight: r.in_flight,
    modelInFlight: r.model_in_flight,
    limit: r.lim,
    activeBatches: r.active_batches,
    pending: r.pending,
  }));
}

/** The shares of `b` while it runs; none once it is finished (nothing is read then). */
export async function sharesOf(
  q: Queryable,
  b: BatchRecord,
  defaultLimit: number,
): Promise<ModelShareRecord[]> {
  if (isBatchTerminal(b.state) || b.counts.pending + b.counts.inProgress === 0) return [];
  return batchShares(q, b.id, defaultLimit);
}
