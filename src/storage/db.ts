/**
 * The database handle the rest of the code gets: the TypeORM data source
 * (entities) and its pg pool for hand-written SQL, and a second, smaller pool
 * for the lease path.
 *
 * Why two pools: uploads, snapshots, result downloads and streams can hold
 * every connection of one pool for seconds; a renewal or a report that waits
 * behind them past a lease's fence makes dispatchers abort paid-for requests
 * fleet-wide. `db.dispatch` is only for the DispatchService (grants,
 * renewals, reports), so client traffic cannot starve it.
 *
 * src/storage/ is the only door to Postgres (pg and typeorm are its alone):
 * this handle, the data source and migrations list, the entities
 * (./entities/), named SQL for files, batches, requests, events and results,
 * LISTEN/NOTIFY, embedded Postgres. It may import src/domain, src/auth
 * (principal scopes, the keyring, token hashing, the TokenStore it
 * implements) and migrations/.
 */
import pg, { type Pool, type PoolClient, type QueryResult, type QueryResultRow } from "pg";
import type { DataSource, EntityManager } from "typeorm";
import { makeDataSource } from "./data-source.js";
import { type PoolTuning, poolConfig } from "./pool-options.js";

export interface DbOptions {
  /** The general pool: API handlers, streams, the reaper. */
  general: PoolTuning;
  /** The lease path's pool (`db.dispatch`); when undefined, `dispatch` is the general pool. */
  dispatch?: PoolTuning;
  /** Called with errors of idle connections (a restarted server, a dropped socket). */
  onPoolError?: (e: unknown) => void;
}

export class Db {
  /**
   * The pool for the lease path (grants, renewals, reports): its own
   * connections, so client traffic on the general pool cannot starve it.
   * For a Db that has no second pool (or for `dispatch` itself): this Db.
   */
  readonly dispatch: Db;

  private constructor(
    /** The pg pool. */
    readonly pool: Pool,
    /**
     * TypeORM's entity manager, for the plain CRUD paths (tokens, tenant
     * weights, model limits): always on the general pool, `dispatch`'s too.
     */
    readonly orm: EntityManager,
    private readonly closePool: () => Promise<void>,
    dispatch?: Db,
  ) {
    this.dispatch = dispatch ?? this;
  }

  /** Connects to `url` (migrations are not run here). */
  static async connect(url: string, options: DbOptions): Promise<Db> {
    const onError = options.onPoolError ?? (() => undefined);
    const ds: DataSource = makeDataSource({
      url,
      poolSize: options.general.size,
      applicationName: options.general.name,
      extra: poolConfig(options.general),
      onPoolError: onError,
    });
    await ds.initialize();
    // TypeORM's postgres driver keeps its pg Pool as `master`.
    const general = (ds.driver as unknown as { master: Pool }).master;
    const closeGeneral = async () => {
      if (ds.isInitialized) await ds.destroy();
    };
    if (options.dispatch === undefined) return new Db(general, ds.manager, closeGeneral);
    const pool = new pg.Pool({ connectionString: url, ...poolConfig(options.dispatch) });
    // An idle client's error is emitted on the pool: without a listener it would crash the process.
    pool.on("error", onError);
    let ended = false;
    const dispatch = new Db(pool, ds.manager, async () => {
      if (ended) return;
      ended = true;
      await pool.end();
    });
    try {
      // Fail at start, not at the first lease, when the pool cannot connect.
      await pool.query("SELECT 1");
    } catch (e) {
      await dispatch.closePool().catch(() => undefined);
      await closeGeneral().catch(() => undefined);
      throw e;
    }
    return new Db(
      general,
      ds.manager,
      async () => {
        await dispatch.closePool();
        await closeGeneral();
      },
      dispatch,
    );
  }

  /**
   * Runs one statement on a pooled connection. A `{ name, text }` statement is
   * prepared once per connection and its plan reused: for the hot paths whose
   * planning costs more than their execution (the claim's).
   */
  query<R extends QueryResultRow = QueryResultRow>(
    text: string | Prepared,
    params: unknown[] = [],
  ): Promise<QueryResult<R>> {
    if (typeof text === "string") return this.pool.query<R>(text, params);
    return this.pool.query<R>({ name: text.name, text: text.text, values: params });
  }

  /** Runs `fn` in a transaction: committed when it returns, rolled back when it throws. */
  tx<T>(fn: (client: PoolClient) => Promise<T>): Promise<T> {
    return transaction(this.pool, fn);
  }

  /** Closes the pools (both, when this Db has two). */
  close(): Promise<void> {
    return this.closePool();
  }
}

/**
 * Runs `fn` in a transaction on a connection of `pool`: committed when it
 * returns, rolled back when it throws (Db.tx; tests that have only a pool).
 */
export async function transaction<T>(
  pool: Pool,
  fn: (client: PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    const result = await fn(client);
    await client.query("COMMIT");
    return result;
  } catch (e) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw e;
  } finally {
    client.release();
  }
}

/** A statement prepared per connection under `name` (see Db.query). */
export interface Prepared {
  name: string;
  text: string;
}

/** Something that runs SQL: the pool, or a client inside a transaction. */
export type Queryable = Pick<Db, "query">;
