/**
 * The entities are the schema.
 *
 * 1. TypeORM's schema builder, run against a freshly migrated database, finds
 *    nothing to change: a column, a type, a default, a nullability, a key, an
 *    index or a named constraint that a migration made and the entities do not
 *    declare (or the other way round) shows as a pending statement.
 * 2. The builder compares CHECK constraints and indexes by name only. So the
 *    entities also build a second, empty database (TypeORM's synchronize, here
 *    and nowhere else), and Postgres' own rendering of every column, constraint
 *    and index of the two must be equal: a CHECK's expression or an index's
 *    WHERE written differently in an entity shows here.
 */
import { randomBytes } from "node:crypto";
import type { DataSource } from "typeorm";
import { afterAll, beforeAll, describe, expect, inject, test } from "vitest";
import { makeDataSource } from "../../src/storage/data-source.js";
import { useTestDatabase } from "../helpers/db.js";
import { admin, withDatabase } from "../helpers/pg-admin.js";

const db = useTestDatabase();
let ds: DataSource;

beforeAll(async () => {
  ds = makeDataSource({ url: db.url, poolSize: 1 });
  await ds.initialize();
});

afterAll(async () => {
  await ds?.destroy();
});

/** The tables the entities declare. */
function tablesOf(d: DataSource): string[] {
  return d.entityMetadatas.map((m) => m.tableName).sort();
}

/** Postgres' rendering of the columns, constraints and indexes of `tables`. */
async function catalog(d: DataSource, tables: string[]) {
  const columns: Array<{ column_default: string | null }> = await d.query(
    `SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default
     FROM information_schema.columns
     WHERE table_schema = 'public' AND table_name = ANY($1) ORDER BY table_name, column_name`,
    [tables],
  );
  // TypeORM writes a number default of a bigint or smallint column quoted ('0'::bigint) where
  // the migrations wrote 0: the same value. (Written `() => "0"` in the entity instead, the
  // schema builder would want to SET DEFAULT 0 on every start.)
  for (const c of columns) {
    c.column_default = c.column_default?.replace(/^'(-?\d+)'::(bigint|smallint)$/, "$1") ?? null;
  }
  const constraints = await d.query(
    `SELECT conrelid::regclass::text AS table_name, conname, pg_get_constraintdef(oid) AS def
     FROM pg_constraint
     WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text = ANY($1)
     ORDER BY 1, 2`,
    [tables],
  );
  const indexes = await d.query(
    `SELECT tablename, indexname, indexdef FROM pg_indexes
     WHERE schemaname = 'public' AND tablename = ANY($1) ORDER BY 1, 2`,
    [tables],
  );
  return { columns, constraints, indexes };
}

describe("entities", () => {
  test("match the migrated schema: the schema builder has nothing to do", async () => {
    const pending = await ds.driver.createSchemaBuilder().log();
    const statements = pending.upQueries.map((q) => q.query);
    // The statements themselves are the useful failure message.
    expect(statements, `pending schema changes:\n${statements.join(";\n")}`).toEqual([]);
  });

  test("every table of the migrations has an entity", async () => {
    const rows: Array<{ table_name: string }> = await ds.query(
      `SELECT table_name FROM information_schema.tables
       WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name <> 'migrations'
       ORDER BY table_name`,
    );
    expect(tablesOf(ds)).toEqual(rows.map((r) => r.table_name));
  });

  test("build, on an empty database, what the migrations built: columns, constraints, indexes", async () => {
    const adminUrl = inject("adminUrl");
    const name = `${inject("dbPrefix")}entities_${randomBytes(4).toString("hex")}`;
    await admin(adminUrl, (c) => c.query(`CREATE DATABASE ${c.escapeIdentifier(name)}`));
    const built = makeDataSource({ url: withDatabase(adminUrl, name), poolSize: 1 });
    try {
      await built.initialize();
      await built.synchronize();
      const tables = tablesOf(ds);
      const fromEntities = await catalog(built, tables);
      const fromMigrations = await catalog(ds, tables);
      expect(fromEntities.columns).toEqual(fromMigrations.columns);
      expect(fromEntities.constraints).toEqual(fromMigrations.constraints);
      expect(fromEntities.indexes).toEqual(fromMigrations.indexes);
    } finally {
      if (built.isInitialized) await built.destroy();
      await admin(adminUrl, (c) =>
        c.query(`DROP DATABASE IF EXISTS ${c.escapeIdentifier(name)} WITH (FORCE)`),
      );
    }
  });
});
