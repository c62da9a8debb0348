/**
 * Model routes (docs/openai-api.md): where a model's requests go when a file
 * names no endpoint. Keys are rows of api_keys (file_id null), encrypted;
 * nothing here returns one except {@link routeFor}, which the upload path
 * needs to store the key with the file's templates.
 */
import { type Keyring, SecretKeyError } from "../auth/secrets.js";
import { NotFoundError, UnavailableError } from "../domain/errors.js";
import { loadKeys, storeKey } from "./api-keys.js";
import type { Db, Queryable } from "./db.js";

/** The model name of the route every model without its own takes. */
export const ANY_MODEL = "*";
/** The tenant of the operator's routes, used by every tenant without its own. */
export const OPERATOR = "";

/** A route as listed: never its key, only whether it has one. */
export interface RouteRecord {
  tenant: string;
  model: string;
  endpoint: string;
  hasApiKey: boolean;
  updatedAt: Date;
}

/** What an upload needs of a route: where, and with which key. */
export interface ResolvedRoute {
  /** The route taken: its tenant ('' for the operator's) and model ('*' or the model). */
  tenant: string;
  model: string;
  endpoint: string;
  apiKey: string | null;
}

interface Row {
  tenant: string;
  model: string;
  endpoint: string;
  api_key_id: string | null;
  updated_at: Date;
}

const toRecord = (r: Row): RouteRecord => ({
  tenant: r.tenant,
  model: r.model,
  endpoint: r.endpoint,
  hasApiKey: r.api_key_id !== null,
  updatedAt: r.updated_at,
});

/** Deletes a route's key row once the route no longer points at it. */
async function dropKey(q: Queryable, keyId: string | null): Promise<void> {
  if (keyId !== null) await q.query(`DELETE FROM api_keys WHERE id = $1`, [keyId]);
}

/** Sets (or replaces) the route of `model` for `tenant` ('' = the operator's). */
export async function setRoute(
  db: Db,
  keyring: Keyring,
  route: { tenant: string; model: string; endpoint: string; apiKey: string | null },
): Promise<RouteRecord> {
  return db.tx(async (q) => {
    const keyId = route.apiKey === null ? null : await storeKey(q, keyring, null, route.apiKey);
    const old = await q.query<{ api_key_id: string | null }>(
      `SELECT api_key_id FROM model_routes WHERE tenant = $1 AND model = $2 FOR UPDATE`,
      [route.tenant, route.model],
    );
    const { rows } = await q.query<Row>(
      `INSERT INTO model_routes (tenant, model, endpoint, api_key_id) VALUES ($1, $2, $3, $4)
       ON CONFLICT (tenant, model) DO UPDATE
         SET endpoint = EXCLUDED.endpoint, api_key_id = EXCLUDED.api_key_id, updated_at = now()
       RETURNING tenant, model, endpoint, api_key_id, updated_at`,
      [route.tenant, route.model, route.endpoint, keyId],
    );
    await dropKey(q, old.rows[0]?.api_key_id ?? null);
    return toRecord(rows[0]!);
  });
}

/** Deletes the route of `model` for `tenant`, and its key; NotFoundError when there is none. */
export async function deleteRoute(db: Db, tenant: string, model: string): Promise<void> {
  const found = await db.tx(async (q) => {
    const { rows } = await q.query<{ api_key_id: string | null }>(
      `DELETE FROM model_routes WHERE tenant = $1 AND model = $2 RETURNING api_key_id`,
      [tenant, model],
    );
    if (rows[0] === undefined) return false;
    await dropKey(q, rows[0].api_key_id);
    return true;
  });
  if (!found) throw new NotFoundError("route", tenant === OPERATOR ? model : `${tenant}/${model}`);
}

/** Every route (of one tenant when `tenant` is given), operator's first, by model. */
export async function listRoutes(db: Db, tenant?: string): Promise<RouteRecord[]> {
  const { rows } = await db.query<Row>(
    `SELECT tenant, model, endpoint, api_key_id, updated_at FROM model_routes
     WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, model`,
    [tenant ?? null],
  );
  return rows.map(toRecord);
}

/**
 * RouteFor: the route `model` takes for `tenant`, with its key decrypted:
 * the tenant's own route for the model, the tenant's '*', the operator's
 * route for the model, the operator's '*'. Uses the primary key.
 */
const ROUTE_FOR = `
  SELECT tenant, model, endpoint, api_key_id, updated_at FROM model_routes
  WHERE tenant IN ($1, '') AND model IN ($2, '*')
  ORDER BY tenant = '', model = '*' LIMIT 1`;

/** The route `model` takes for `tenant` (see ROUTE_FOR), or undefined when none applies. */
export async function routeFor(
  db: Db,
  keyring: Keyring,
  tenant: string,
  model: string,
): Promise<ResolvedRoute | undefined> {
  const { rows } = await db.query<Row>(ROUTE_FOR, [tenant, model]);
  const r = rows[0];
  if (r === undefined) return undefined;
  let apiKey: string | null = null;
  if (r.api_key_id !== null) {
    const { keys, failed } = await loadKeys(db, keyring, [r.api_key_id]);
    const why = failed.get(r.api_key_id);
    if (why !== undefined) {
      // The operator's configuration, not the caller's input, is at fault.
      throw new UnavailableError(`the key of route ${r.model} cannot be read: ${why}`, {
        cause: new SecretKeyError(why),
      });
    }
    apiKey = keys.get(r.api_key_id)!;
  }
  return { tenant: r.tenant, model: r.model, endpoint: r.endpoint, apiKey };
}
