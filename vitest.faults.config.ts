import { defineConfig } from "vitest/config";

/**
 * `npm run test:faults`: the fault suite (test/faults/) at full size, thousands of
 * requests per scenario. Files run one at a time: each starts its own fleet of
 * processes, and the scenarios measure the limit at the upstream, which a CPU
 * shared with another fleet would make slow rather than wrong, but slow enough
 * to blur what each fault does.
 */
export default defineConfig({
  test: {
    include: ["test/faults/**/*.test.ts"],
    globalSetup: ["test/helpers/global-setup.ts"],
    // FUSILLADE_FAULTS=ci npm run test:faults: every scenario at CI size (a quick pass).
    env: { FUSILLADE_FAULTS: process.env.FUSILLADE_FAULTS ?? "full" },
    pool: "forks",
    fileParallelism: false,
    testTimeout: 300_000,
    hookTimeout: 120_000,
  },
});
