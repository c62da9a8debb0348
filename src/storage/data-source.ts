/** Builds the TypeORM data source (and its pg pool) for a database URL. */
import type { PoolConfig } from "pg";
import { DataSource } from "typeorm";
import { InitialSchema1764400000000 } from "../../migrations/1764400000000-initial-schema.js";
import { CapacityLeases1764500000000 } from "../../migrations/1764500000000-capacity-leases.js";
import { ResponseBytes1764600000000 } from "../../migrations/1764600000000-response-bytes.js";
import { Trust1764700000000 } from "../../migrations/1764700000000-trust.js";
import { ApiKeys1764800000000 } from "../../migrations/1764800000000-api-keys.js";
import { FairShare1764900000000 } from "../../migrations/1764900000000-fair-share.js";
import { Pacing1765000000000 } from "../../migrations/1765000000000-pacing.js";
import { ModelRoutes1765100000000 } from "../../migrations/1765100000000-model-routes.js";
import { Retention1765200000000 } from "../../migrations/1765200000000-retention.js";
import { HotPathWrites1765300000000 } from "../../migrations/1765300000000-hot-path-writes.js";
import { AttemptStatus1765400000000 } from "../../migrations/1765400000000-attempt-status.js";
import { RateAcks1765500000000 } from "../../migrations/1765500000000-rate-acks.js";
import { PacingViews1765500000001 } from "../../migrations/1765500000001-pacing-views.js";
import { ENTITIES } from "./entities/index.js";

/** Advisory lock key held while migrations run ("fusillade" in hex, truncated). */
const MIGRATION_LOCK_KEY = 0x66757369;

/** Migrations in the order they run. */
export const MIGRATIONS = [
  InitialSchema1764400000000,
  CapacityLeases1764500000000,
  ResponseBytes1764600000000,
  Trust1764700000000,
  ApiKeys1764800000000,
  FairShare1764900000000,
  Pacing1765000000000,
  ModelRoutes1765100000000,
  Retention1765200000000,
  HotPathWrites1765300000000,
  AttemptStatus1765400000000,
  RateAcks1765500000000,
  PacingViews1765500000001,
];

export interface DataSourceOptions {
  url: string;
  /** Pool size. @default 10 */
  poolSize?: number;
  applicationName?: string;
  /** Further pg Pool settings (timeouts, keepalive): see ./pool-options.ts. */
  extra?: PoolConfig;
  /** Errors of idle pooled connections. @default a TypeORM log line */
  onPoolError?: (e: unknown) => void;
}

/** A data source for `url`, not yet initialized. */
export function makeDataSource(options: DataSourceOptions): DataSource {
  return new DataSource({
    type: "postgres",
    url: options.url,
    entities: ENTITIES,
    migrations: MIGRATIONS,
    synchronize: false,
    // gen_random_uuid() is built in since Postgres 13: no extension to create at each connect,
    // and the uuid keys' default the entities describe is that one (the migrations' own).
    installExtensions: false,
    uuidExtension: "pgcrypto",
    migrationsRun: false,
    logging: false,
    poolSize: options.poolSize ?? 10,
    applicationName: options.applicationName ?? "fusillade",
    ...(options.extra ? { extra: options.extra } : {}),
    ...(options.onPoolError ? { poolErrorHandler: options.onPoolError } : {}),
  });
}

/** Applies pending migrations to the database at `url`; returns their names. */
export async function migrate(url: string): Promise<string[]> {
  const ds = makeDataSource({ url, poolSize: 1, applicationName: "fusillade-migrate" });
  await ds.initialize();
  try {
    // Replicas starting together take turns; the second finds nothing to do.
    await ds.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK_KEY]);
    const ran = await ds.runMigrations({ transaction: "each" });
    return ran.map((m) => m.name);
  } finally {
    await ds.destroy();
  }
}
