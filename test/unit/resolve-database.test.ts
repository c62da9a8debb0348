import { describe, expect, test } from "vitest";
import { resolveDatabase } from "../../src/storage/resolve-database.js";

// The embedded branch starts a server: see test/integration/embedded-postgres.test.ts.
describe("resolveDatabase with a databaseUrl", () => {
  test("uses it as given, and stop() does nothing", async () => {
    const db = await resolveDatabase({
      databaseUrl: " postgres://u@db.example:5433/x ",
      dataDir: "/nonexistent",
    });
    expect(db).toMatchObject({ url: "postgres://u@db.example:5433/x", embedded: false });
    await db.stop();
  });

  test.each(["mysql://u@h/db", "not a url"])("rejects %j, naming DATABASE_URL", async (url) => {
    await expect(resolveDatabase({ databaseUrl: url, dataDir: "/nonexistent" })).rejects.toThrow(
      /DATABASE_URL/,
    );
  });
});
