/** Model limits as stored, with current usage, for AdminService. */
import type { Db } from "./db.js";
import { ModelLimitEntity } from "./entities/index.js";
import { decodePageToken, encodePageToken } from "./pages.js";

export interface ModelLimitRecord {
  model: string;
  /** null: the server default applies. */
  limit: number | null;
  inFlight: number;
  /** Σ slots of unexpired grants. */
  slotsGranted: number;
  pending: number;
  holdUntil: Date | null;
}

interface Row {
  model: string;
  max_in_flight: number | null;
  hold_until: Date | null;
  in_flight: number;
  slots_granted: number;
  pending: string;
}

const SELECT_WITH_USAGE = `
  SELECT m.model, m.max_in_flight, CASE WHEN m.hold_until > now() THEN m.hold_until END AS hold_until,
    (SELECT count(*)::int FROM requests r WHERE r.model = m.model AND r.state = 'leased') AS in_flight,
    (SELECT coalesce(sum(s.slots), 0)::int FROM slot_grants s
      WHERE s.model = m.model AND s.expires_at > now()) AS slots_granted,
    (SELECT count(*) FROM requests r WHERE r.model = m.model AND r.state = 'pending') AS pending
  FROM model_limits m`;

function toRecord(r: Row): ModelLimitRecord {
  return {
    model: r.model,
    limit: r.max_in_flight,
    inFlight: r.in_flight,
    slotsGranted: r.slots_granted,
    pending: Number(r.pending),
    holdUntil: r.hold_until,
  };
}

/**
 * Sets (or with null, clears) a model's limit and wakes lease waiters: a
 * raised limit is used at once; a lowered one stops new grants at once
 * (grants read it under the row's lock).
 */
export async function setModelLimit(
  db: Db,
  model: string,
  limit: number | null,
): Promise<ModelLimitRecord> {
  await db.orm.transaction(async (m) => {
    // The upsert sets only the columns named: a 429 hold (hold_until) stays.
    await m
      .getRepository(ModelLimitEntity)
      .upsert({ model, maxInFlight: limit, updatedAt: () => "now()" }, ["model"]);
    await m.query(`SELECT pg_notify('fusillade_work', $1), pg_notify('fusillade_limits', $1)`, [
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
