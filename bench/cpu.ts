/**
 * Scenario "cpu": CPU per request of every process of the system (the mock
 * upstream aside) beside pg-boss tuned, in the same run, on the same
 * Postgres server and against the same mock: N requests over 2 models at
 * limit 500, a 50 ms upstream, every response stored (the peer benchmark's
 * "50 ms / limit 500" scenario, /work/shared/peers/README.md).
 *
 * - Fusillade: `fusillade serve` in its own process (control plane and
 *   dispatcher thread), driven by the CLI as a user would: `submit`, `watch`
 *   to the end, `results --output`. CPU: serve's (all threads, from
 *   /proc/<pid>/stat across the run) + each CLI process's (whole life,
 *   written at its exit by a preload) + Postgres'.
 * - pg-boss tuned: the peer benchmark's runner (enqueue, work until no job
 *   is left); its process's CPU over its whole life + Postgres'.
 * - Postgres: the postmaster and all its children, exited ones included
 *   (its cutime/cstime); exact on the bench's own embedded server, other
 *   databases' work included on a shared one.
 *
 * BENCH_FUSILLADE_DIR: run `serve` and the CLI of another built checkout
 * (default: this one), to compare two versions on one machine.
 *
 * Needs a copy of the peer benchmark with its node_modules (its README:
 * copy the folder, `npm ci` there) named by BENCH_PEERS_DIR; without it the
 * scenario is skipped. Linux only (/proc).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import pg from "pg";
import { type Bench, chatJsonl, round, scaled } from "./common.js";

const LIMIT = 500;
/** bin/fusillade.js of the checkout under test. */
const FUSILLADE = path.join(process.env.BENCH_FUSILLADE_DIR ?? ".", "bin", "fusillade.js");
const MODELS = 2;
/** Longest a CLI or peer run may take (the whole scenario takes ~1 min). */
const RUN_TIMEOUT_MS = 10 * 60_000;
/** Clock ticks per second in /proc/<pid>/stat (USER_HZ: 100 on Linux). */
const TICKS = 100;
const PRELOAD = `const fs = require("node:fs");
process.on("exit", () => {
  const u = process.cpuUsage();
  fs.writeFileSync(process.env.BENCH_CPU_FILE, String(u.user + u.system));
});`;

/** utime + stime (and, with `children`, of its exited children) of a process, in µs. */
async function procCpuUs(pid: number, children = false): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  const f = stat
    .slice(stat.lastIndexOf(")") + 2)
    .split(" ")
    .map(Number);
  // f[0] is field 3 (state): utime 14, stime 15, cutime 16, cstime 17.
  const ticks = f[11]! + f[12]! + (children ? f[13]! + f[14]! : 0);
  return (ticks * 1e6) / TICKS;
}

/** CPU of a Postgres server so far: the postmaster, its live children and its exited ones. */
async function postgresCpuUs(postmaster: number): Promise<number> {
  let total = await procCpuUs(postmaster, true);
  for (const d of await readdir("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = await readFile(`/proc/${d}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === postmaster) total += await procCpuUs(Number(d));
    } catch {
      // gone meanwhile: its time is in the postmaster's cutime now
    }
  }
  return total;
}

/** Runs a node process to its end; its CPU (µs, all threads) and stdout. */
async function nodeRun(
  args: string[],
  env: NodeJS.ProcessEnv,
  tmp: string,
): Promise<{ cpuUs: number; out: string }> {
  const file = path.join(tmp, `cpu-${performance.now()}.txt`);
  const child = spawn(process.execPath, ["-r", path.join(tmp, "preload.cjs"), ...args], {
    env: { ...process.env, ...env, BENCH_CPU_FILE: file },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => {
    out += d;
  });
  child.stderr.on("data", (d) => {
    err += d;
  });
  // A batch that never finishes would keep `watch` waiting: fail the scenario instead.
  const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS);
  const [code] = (await once(child, "exit")) as [number | null];
  clearTimeout(timer);
  if (code !== 0) throw new Error(`cpu: ${args.slice(0, 2).join(" ")} exited ${code}: ${err}`);
  return { cpuUs: Number(await readFile(file, "utf8")), out };
}

/** Starts a long-running process; resolves once `ready(stdout so far)` returns a value. */
async function startProcess<T>(
  args: string[],
  env: NodeJS.ProcessEnv,
  ready: (out: string) => T | undefined,
): Promise<{ child: ChildProcess; value: T }> {
  const child = spawn(process.execPath, args, {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  return new Promise((resolve, reject) => {
    const check = () => {
      const v = ready(out);
      if (v !== undefined) resolve({ child, value: v });
    };
    child.stdout!.on("data", (d) => {
      out += d;
      check();
    });
    child.stderr!.on("data", (d) => {
      out += d;
      check();
    });
    child.on("exit", (c) => reject(new Error(`cpu: ${args[0]} exited ${c}: ${out.slice(-2000)}`)));
  });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  child.removeAllListeners("exit");
  const exited = once(child, "exit");
  child.kill("SIGTERM");
  await exited;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(port, "127.0.0.1");
    c.once("connect", () => {
      c.destroy();
      resolve(true);
    });
    c.once("error", () => resolve(false));
  });
}

function jsonlFor(n: number): string {
  return chatJsonl(
    n,
    (i) => `model-${i % MODELS}`,
    (i) => `Say hello to request ${i}.`,
  );
}

/** A fresh database on the bench's server; its URL. */
async function freshDatabase(admin: pg.Client, base: string, name: string): Promise<string> {
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${name}`);
  const u = new URL(base);
  u.pathname = `/${name}`;
  return u.toString();
}

/** Fusillade through `serve` and the CLI; CPU per part, µs. */
async function fusillade(
  bench: Bench,
  admin: pg.Client,
  postmaster: number,
  upstream: string,
  n: number,
  tmp: string,
): Promise<Record<string, number>> {
  const db = await freshDatabase(admin, bench.databaseUrl, "bench_cpu_fusillade");
  const port = await freePort();
  const serve = spawn(
    process.execPath,
    [FUSILLADE, "serve", "--listen", `127.0.0.1:${port}`, "--default-limit", `${LIMIT}`],
    { env: { ...process.env, DATABASE_URL: db }, stdio: "ignore" },
  );
  try {
    for (let i = 0; !(await portOpen(port)); i++) {
      if (i > 600 || serve.exitCode !== null) throw new Error("cpu: serve did not start");
      await new Promise((r) => setTimeout(r, 100));
    }
    const file = path.join(tmp, "in.jsonl");
    await writeFile(file, jsonlFor(n));
    const server = `http://127.0.0.1:${port}`;
    const s0 = await procCpuUs(serve.pid!);
    const g0 = await postgresCpuUs(postmaster);
    const t0 = performance.now();
    const submit = await nodeRun(
      [FUSILLADE, "submit", file, "--endpoint", upstream, "--server", server, "--json"],
      {},
      tmp,
    );
    const batchId = (JSON.parse(submit.out) as { batch_id: string }).batch_id;
    const t1 = performance.now();
    const watch = await nodeRun(
      [FUSILLADE, "watch", batchId, "--server", server, "--json"],
      {},
      tmp,
    );
    const t2 = performance.now();
    const results = await nodeRun(
      [FUSILLADE, "results", batchId, "--server", server, "--output", path.join(tmp, "out.jsonl")],
      {},
      tmp,
    );
    const t3 = performance.now();
    const wallS = (t3 - t0) / 1000;
    const serveUs = (await procCpuUs(serve.pid!)) - s0;
    const pgUs = (await postgresCpuUs(postmaster)) - g0;
    const cliUs = submit.cpuUs + watch.cpuUs + results.cpuUs;
    const lines = (await readFile(path.join(tmp, "out.jsonl"), "utf8")).split("\n").filter(Boolean);
    if (lines.length !== n) throw new Error(`cpu: results has ${lines.length} lines, not ${n}`);
    return {
      end_to_end_s: round(wallS, 2),
      // Wall time of each command: upload + CreateBatch, the batch's run, the download.
      submit_s: round((t1 - t0) / 1000, 2),
      watch_s: round((t2 - t1) / 1000, 2),
      results_s: round((t3 - t2) / 1000, 2),
      serve_us: Math.round(serveUs / n),
      cli_us: Math.round(cliUs / n),
      postgres_us: Math.round(pgUs / n),
      total_us: Math.round((serveUs + cliUs + pgUs) / n),
    };
  } finally {
    await stop(serve);
  }
}

/** pg-boss tuned (the peer benchmark's runner); CPU per part, µs. */
async function pgBoss(
  bench: Bench,
  admin: pg.Client,
  postmaster: number,
  peers: string,
  upstream: string,
  n: number,
  tmp: string,
): Promise<Record<string, number>> {
  const db = await freshDatabase(admin, bench.databaseUrl, "bench_cpu_pgboss");
  const g0 = await postgresCpuUs(postmaster);
  const t0 = performance.now();
  const run = await nodeRun(
    [
      path.join(peers, "peers", "pg-boss.mjs"),
      "--variant",
      "tuned",
      "--db",
      db,
      "--upstream",
      upstream,
      "--n",
      `${n}`,
      "--models",
      `${MODELS}`,
      "--limit",
      `${LIMIT}`,
    ],
    {},
    tmp,
  );
  const wallS = (performance.now() - t0) / 1000;
  const pgUs = (await postgresCpuUs(postmaster)) - g0;
  const row = JSON.parse(run.out.trim().split("\n").at(-1)!) as {
    enqueue_s: number;
    process_s: number;
    completed: number;
  };
  if (row.completed !== n) throw new Error(`cpu: pg-boss completed ${row.completed} of ${n}`);
  return {
    end_to_end_s: round(row.enqueue_s + row.process_s, 2),
    process_wall_s: round(wallS, 2),
    peer_us: Math.round(run.cpuUs / n),
    postgres_us: Math.round(pgUs / n),
    total_us: Math.round((run.cpuUs + pgUs) / n),
  };
}

export async function cpuScenario(bench: Bench): Promise<Record<string, unknown>> {
  const peers = process.env.BENCH_PEERS_DIR;
  if (peers === undefined || !existsSync(path.join(peers, "node_modules", "pg-boss"))) {
    return { skipped: "set BENCH_PEERS_DIR to a copy of the peer benchmark after `npm ci` in it" };
  }
  const n = scaled(20_000, 1_000);
  const tmp = await mkdtemp(path.join(os.tmpdir(), "fusillade-bench-cpu-"));
  await writeFile(path.join(tmp, "preload.cjs"), PRELOAD);
  const admin = new pg.Client({ connectionString: bench.databaseUrl });
  await admin.connect();
  const { child: mock, value: mockPort } = await startProcess(
    [path.join(peers, "mock-upstream.mjs"), "--port", "0", "--latency-ms", "50"],
    {},
    (out) => /"port":\s*(\d+)/.exec(out)?.[1],
  );
  try {
    const backend = (await admin.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!;
    const stat = await readFile(`/proc/${backend.pid}/stat`, "utf8");
    const postmaster = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    const upstream = `http://127.0.0.1:${mockPort}`;
    const fus = await fusillade(bench, admin, postmaster, upstream, n, tmp);
    const boss = await pgBoss(bench, admin, postmaster, peers, upstream, n, tmp);
    return {
      requests: n,
      fusillade: fus,
      pg_boss_tuned: boss,
      cpu_ratio_to_pg_boss: round(fus.total_us! / boss.total_us!, 2),
      end_to_end_ratio_to_pg_boss: round(boss.end_to_end_s! / fus.end_to_end_s!, 2),
    };
  } finally {
    await stop(mock);
    await admin.end();
    await rm(tmp, { recursive: true, force: true });
  }
}
