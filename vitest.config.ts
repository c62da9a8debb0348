import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The fault suite's one-scenario-each files run at full size under `npm run test:faults`;
    // its CI-sized run (test/faults/all-faults.test.ts, every fault on one batch) stays here.
    exclude: [...configDefaults.exclude, "test/faults/scenarios/**"],
    // One Postgres server and migrated template per run; each test file clones its own
    // database from it (test/helpers/db.ts), so files run in parallel (forks pool).
    globalSetup: ["test/helpers/global-setup.ts"],
    pool: "forks",
    fileParallelism: true,
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
