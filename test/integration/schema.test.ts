/**
 * The entities are the schema: TypeORM's schema builder, run against a freshly
 * migrated database, finds nothing to change. A column, a default, a
 * nullability, an index or a key that a migration made and the entities do not
 * declare (or the other way round) shows here as a pending statement.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { makeDataSource } from "../../src/storage/data-source.js";
import { useTestDatabase } from "../helpers/db.js";

const db = useTestDatabase();
let ds: ReturnType<typeof makeDataSource>;

beforeAll(async () => {
  ds = makeDataSource({ url: db.url, poolSize: 1 });
  await ds.initialize();
});

afterAll(async () => {
  await ds?.destroy();
});

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
    const declared = ds.entityMetadatas.map((m) => m.tableName).sort();
    expect(declared).toEqual(rows.map((r) => r.table_name));
  });
});
