import { availableParallelism } from "node:os";
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
    // Vitest's default is one worker less than the CPUs: on a 2-core machine, one, and the
    // files ran one after another (~570 s). Most of a file's time is spent waiting on child
    // processes, sockets and Postgres, so three share two cores well (217–307 s in six runs,
    // 2026-12-06, after the races this load exposed were fixed).
    maxWorkers: Math.max(3, availableParallelism() - 1),
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
