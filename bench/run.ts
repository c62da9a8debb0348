/**
 * `npm run bench` (`npm run bench:smoke`: BENCH_SCALE=smoke, every scenario at
 * about 1 % of its size, for CI). The machines are shared and noisy, so each
 * scenario measures its own ceiling in the same run and every figure is
 * printed beside it as a ratio:
 *
 * - ingest (./ingest.ts): UploadFile of 50,000 lines vs COPY of the same rows;
 * - batch start (./batch-start.ts): CreateBatch of 50,000 vs the SQL snapshot;
 *   CreateBatch → first upstream call; response → next request of a limit-1 model;
 * - dispatch (./dispatch.ts): two batches end to end through the client path
 *   vs the no-database ceiling (./ceiling.ts), limits checked at the upstream;
 * - memory (./memory.ts): RSS of a control plane and a dispatcher (separate
 *   processes) holding 10,000 requests in flight vs a bare undici process;
 * - reads (./reads.ts): GetBatchStatus and ListBatchRequests on a batch of
 *   1,000,000 requests vs the same answers in plain SQL; GetBatchResults of
 *   20,000 completed requests (~1 KiB bodies) vs one SQL statement;
 * - claims (./claims.ts): a Sync claiming 10 with a 1,000,000-request backlog,
 *   fair share on and off, vs the bare claim statement;
 * - pacing (./pacing.ts): batches against a metered upstream (rate known, unknown,
 *   tokens) and one answering 3 % of calls 429, vs the meter's own rate;
 * - soak (./soak.ts): 200,000 requests in 100 batches with a retention of a
 *   minute, table sizes, dead rows and claim/report latency at intervals;
 * - writes (./writes.ts): rows, HOT updates, WAL bytes and statements per
 *   request of ingest and of dispatch (load-independent units);
 * - cpu (./cpu.ts): CPU per request of serve + CLI + Postgres vs pg-boss
 *   tuned on the same server and mock (needs BENCH_PEERS_DIR).
 *
 * Prints a table, writes every figure to bench/results/latest.json, and exits
 * non-zero when a check fails (a model's limit exceeded at the upstream, a
 * custom_id missing or duplicated in the results).
 *
 * Env: BENCH_DATABASE_URL (default: an embedded Postgres in a temp dir),
 * BENCH_PEERS_DIR (the cpu scenario's pg-boss: a copy of the shared peers folder,
 * ../shared/peers, after `npm ci` in it), FUSILLADE_FAIR_SHARE=off (the control
 * plane's claims oldest batch first), BENCH_SCALE=smoke, BENCH_SOAK_BATCHES (the
 * soak's batch count, default 100), BENCH_PACING=known,random (the pacing cases:
 * known, unknown, bare, tokens, random, random-wide; BENCH_PACING_TRACE=1 prints where each
 * model's 429s fell), BENCH_ONLY=dispatch,memory (a comma list of scenarios: ingest,
 * batch_start, dispatch, memory, reads, claims, pacing, soak, writes, cpu;
 * batch_start runs ingest too), BENCH_DISPATCHER=port|http2|inline (how the
 * scenarios' dispatcher reaches the control plane: its thread over the control
 * plane's MessagePort as serve's does, the default; its thread over HTTP/2 as a
 * separate dispatcher does; or the bench's own event loop), BENCH_PREFETCH.
 */
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { CONTROL_PLANE_DEFAULTS } from "../src/config/config.js";
import { startControlPlane } from "../src/control-plane.js";
import { batchStartScenario } from "./batch-start.js";
import { claimsScenario } from "./claims.js";
import { type Bench, clients, log, SMOKE, since } from "./common.js";
import { cpuScenario } from "./cpu.js";
import { dispatchScenario } from "./dispatch.js";
import { ingestScenario } from "./ingest.js";
import { memoryScenario } from "./memory.js";
import { pacingScenario } from "./pacing.js";
import { readsScenario } from "./reads.js";
import { soakScenario } from "./soak.js";
import { printTable } from "./table.js";
import { writesScenario } from "./writes.js";

/** Templates of the ingest scenario point here; nothing ever sends them. */
const NOWHERE = "http://127.0.0.1:9";

async function main(): Promise<number> {
  const started = performance.now();
  const results: Record<string, unknown> = {
    date: new Date().toISOString(),
    scale: SMOKE ? "smoke" : "full",
    machine: `${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}, load ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  };
  const tmp = await mkdtemp(path.join(os.tmpdir(), "fusillade-bench-"));
  // The embedded Postgres runs as an unprivileged user that must reach its data dir.
  await chmod(tmp, 0o755);
  const cp = await startControlPlane(
    {
      ...CONTROL_PLANE_DEFAULTS,
      port: 0,
      dataDir: tmp,
      databaseUrl: process.env.BENCH_DATABASE_URL,
      logLevel: "warn",
      // FUSILLADE_FAIR_SHARE=off: the whole bench with claims oldest batch first.
      sharePolicy: process.env.FUSILLADE_FAIR_SHARE === "off" ? "fifo" : "fair",
    },
    log,
  );
  const bench: Bench = {
    cpUrl: cp.url,
    dispatcherLink: () => ({
      port: cp.internalDispatcherPort(),
      token: cp.internalDispatcherToken(),
    }),
    databaseUrl: cp.databaseUrl,
    ...clients(cp.url),
    failures: [],
  };
  const step = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    process.stderr.write(`bench: ${name}…`);
    const out = await fn();
    process.stderr.write(` ${(since(t0) / 1000).toFixed(1)} s\n`);
    return out;
  };
  const only = process.env.BENCH_ONLY?.split(",").map((s) => s.trim());
  const wanted = (name: string) => only === undefined || only.includes(name);
  try {
    if (wanted("ingest") || wanted("batch_start")) {
      const ingest = await step("ingest", () => ingestScenario(bench, NOWHERE));
      results.ingest = ingest.figures;
      if (wanted("batch_start")) {
        results.batch_start = await step("batch start", () => batchStartScenario(bench, ingest));
      }
    }
    if (wanted("dispatch"))
      results.dispatch = await step("dispatch", () => dispatchScenario(bench));
    if (wanted("memory")) results.memory = await step("memory", () => memoryScenario(bench));
    if (wanted("reads")) results.reads = await step("reads", () => readsScenario(bench));
    if (wanted("claims")) results.claims = await step("claims", () => claimsScenario(bench));
    if (wanted("pacing")) results.pacing = await step("pacing", () => pacingScenario(bench));
    if (wanted("soak")) results.soak = await step("soak", () => soakScenario(bench));
    if (wanted("writes")) results.writes = await step("writes", () => writesScenario(bench));
    if (wanted("cpu")) results.cpu = await step("cpu", () => cpuScenario(bench));
  } finally {
    await cp.close();
    await rm(tmp, { recursive: true, force: true });
  }
  results.failures = bench.failures;
  results.total_s = Math.round(since(started) / 1000);
  await mkdir(path.join("bench", "results"), { recursive: true });
  await writeFile(
    path.join("bench", "results", "latest.json"),
    `${JSON.stringify(results, null, 2)}\n`,
  );
  printTable(results);
  console.log(`\n${results.machine}; ${results.total_s} s; bench/results/latest.json written`);
  for (const f of bench.failures) console.error(`CHECK FAILED: ${f}`);
  return bench.failures.length === 0 ? 0 : 1;
}

process.exitCode = await main();
