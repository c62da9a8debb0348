import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // One Postgres server and migrated template per run; each test file clones its own
    // database from it (test/helpers/db.ts), so files run in parallel (forks pool).
    globalSetup: ["test/helpers/global-setup.ts"],
    pool: "forks",
    fileParallelism: true,
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
