/**
 * The database handle the rest of the code gets: the TypeORM data source
 * (entities, migrations) and its pg pool, for hand-written SQL.
 */
import type { Pool, PoolClient, QueryResult, QueryResultRow } from "pg";
import type { DataSource } from "typeorm";
import { makeDataSource } from "./data-source.js";

/** Something that runs SQL: the pool, or a client inside a transaction. */
export type Queryable = Pick<PoolClient, "query">;

export class Db {
  /** The pg pool behind the data source. */
  readonly pool: Pool;

  private constructor(readonly dataSource: DataSource) {
    // TypeORM's postgres driver keeps its pg Pool as `master`.
    this.pool = (dataSource.driver as unknown as { master: Pool }).master;
  }

  /** Connects to `url` (migrations are not run here). */
  static async connect(url: string, options: { poolSize?: number; name?: string } = {}) {
    const ds = makeDataSource({
      url,
      poolSize: options.poolSize,
      applicationName: options.name,
    });
    await ds.initialize();
    return new Db(ds);
  }

  /** Runs one statement on a pooled connection. */
  query<R extends QueryResultRow = QueryResultRow>(
    text: string,
    params: unknown[] = [],
  ): Promise<QueryResult<R>> {
    return this.pool.query<R>(text, params);
  }

  /** Runs `fn` in a transaction: committed when it returns, rolled back when it throws. */
  async tx<T>(fn: (client: PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
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

  /** Closes the pool. */
  async close(): Promise<void> {
    if (this.dataSource.isInitialized) await this.dataSource.destroy();
  }
}
