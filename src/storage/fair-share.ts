/**
 * What fair share reads and sets outside the claim (docs/fair-share.md):
 * tenant weights, and a running batch's current share of its models.
 */
import { isBatchTerminal } from "../domain/states.js";
import type { BatchRecord } from "./batches.js";
import type { Db, Prepared, Queryable } from "./db.js";
import { TenantEntity } from "./entities/index.js";
import { type FleetPacing, type PacingRow, pacingOf, runningNow } from "./pacing-views.js";

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
  const tenants = db.orm.getRepository(TenantEntity);
  if (weight === null) await tenants.delete({ name: tenant });
  else await tenants.upsert({ name: tenant, weight, updatedAt: () => "now()" }, ["name"]);
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
  /** This batch's part of modelRunning, in proportion to its claims. */
  running: number;
  /** The model's claims that hold a granted slot (runningNow). */
  modelRunning: number;
  /** How the fleet paces the model now (docs/pacing.md); null: no dispatcher has said. */
  pacing: FleetPacing | null;
}

/**
 * SQL: the claims of batch `b` (a batches row, with its file's `models`) of
 * `model`: its leased_count when the file has that one model (no row is read),
 * else a count of its leased rows of the model (requests_leased_batch: at most
 * its claims). Shared by the claim's candidates and the batch shares.
 */
export function batchClaimsOf(b: string, models: string, model: string): string {
  return `CASE WHEN cardinality(${models}) = 1 THEN ${b}.leased_count
    ELSE (SELECT count(*)::int FROM requests r
          WHERE r.batch_id = ${b}.id AND r.state = 'leased' AND r.model = ${model}) END`;
}

/**
 * BatchShares: per model of the batch's file it has a pending or claimed
 * request of, its claims, the model's claims and limit, and how many running
 * batches share the model. Never counts pending rows, nor (for a batch of
 * one model, the common case) claimed ones: a batch of one model's claims
 * are its leased_count. Reads the unfinished batches, one index probe per
 * batch and model (requests_pending_batch), and the claimed rows of batches
 * of several models (requests_leased_batch). A batch whose file was deleted
 * shows none. Also the model's unexpired slots (slot_grants: a row per
 * dispatcher and model), which bound what of the claims runs (runningNow),
 * and the fleet's pacing view (./pacing-views.ts). Prepared: its planning
 * cost more than its execution. Params:
 * batch id, default limit.
 */
const BATCH_SHARES: Prepared = {
  name: "fusillade_batch_shares",
  text: `
  WITH open AS (
    SELECT b.id, b.leased_count, b.cancelling_at IS NULL AND b.expires_at > now() AS running,
      f.models
    FROM batches b LEFT JOIN files f ON f.id = b.file_id WHERE b.finished_at IS NULL
  ), claims AS (
    -- Claims of each open batch of each of its models.
    SELECT o.id, o.running, m.model, ${batchClaimsOf("o", "o.models", "m.model")} AS n
    FROM open o CROSS JOIN LATERAL unnest(o.models) AS m(model)
    WHERE m.model IN (SELECT unnest(models) FROM open WHERE id = $1)
  ), per AS (
    SELECT c.*,
      (SELECT true FROM requests r
        WHERE r.model = c.model AND r.batch_id = c.id AND r.state = 'pending'
        ORDER BY r.created_at, r.line LIMIT 1) IS NOT NULL AS waiting
    FROM claims c
  )
  SELECT p.model, p.n AS in_flight,
    (SELECT coalesce(sum(x.n), 0)::int FROM per x WHERE x.model = p.model) AS model_in_flight,
    coalesce((SELECT l.max_in_flight FROM model_limits l WHERE l.model = p.model), $2)::int AS lim,
    (SELECT count(*)::int FROM per x
      WHERE x.model = p.model AND x.running AND (x.waiting OR x.n > 0)) AS active_batches,
    (SELECT coalesce(sum(s.slots), 0)::int FROM slot_grants s
      WHERE s.model = p.model AND s.expires_at > now()) AS slots,
    ${pacingOf("p.model")} AS pacing
  FROM per p WHERE p.id = $1 AND (p.n > 0 OR p.waiting) ORDER BY p.model`,
};

/** The shares of a batch that is still running (an empty list for a finished one). */
export async function batchShares(
  q: Queryable,
  batchId: string,
  defaultLimit: number,
): Promise<ModelShareRecord[]> {
  const { rows } = await q.query<{
    model: string;
    in_flight: number;
    model_in_flight: number;
    lim: number;
    active_batches: number;
    slots: number;
    pacing: PacingRow | null;
  }>(BATCH_SHARES, [batchId, defaultLimit]);
  return rows.map((r) => {
    const { running: modelRunning, pacing } = runningNow(r.model_in_flight, r.slots, r.pacing);
    return {
      model: r.model,
      inFlight: r.in_flight,
      modelInFlight: r.model_in_flight,
      limit: r.lim,
      activeBatches: r.active_batches,
      modelRunning,
      running:
        r.model_in_flight === 0
          ? 0
          : Math.min(r.in_flight, Math.round((r.in_flight * modelRunning) / r.model_in_flight)),
      pacing,
    };
  });
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
