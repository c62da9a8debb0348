/**
 * Scenario "memory": one dispatcher holding 10,000 concurrent requests
 * against a 2 s upstream (model limit 10,000), the control plane and the
 * dispatcher each a process of its own (`bin/fusillade.js control-plane`,
 * `… dispatcher`), their resident memory (VmRSS) sampled from /proc every
 * 100 ms: idle before the batch, and peak. The ceiling: a bare Node process
 * of plain undici loops holding the same number in flight (./ceiling-process.ts).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  BENCH_CAPACITY,
  type Bench,
  clients,
  jsonl,
  round,
  rssMiB,
  scaled,
  upload,
  waitFinished,
} from "./common.js";
import { BenchUpstream } from "./upstream.js";

const MODEL = "bench-memory";
const LATENCY_MS = 2000;
const PAD = 64;

interface Service {
  child: ChildProcess;
  pid: number;
  /** The first match of the readiness pattern's group 1 (e.g. the URL), or "". */
  ready: string;
}

/** Starts `node args…`; resolves once a line of its output matches `readyLine`. */
async function startProcess(args: string[], readyLine: RegExp, from: "stdout" | "stderr") {
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const onData = (c: Buffer) => {
    output = (output + c.toString()).slice(-8192);
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const ready = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not ready in 60 s: ${output}`)), 60_000);
    const look = () => {
      const m = readyLine.exec(output);
      if (!m) return;
      clearTimeout(timer);
      child[from]!.off("data", look);
      resolve(m[1] ?? "");
    };
    child[from]!.on("data", look);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before ready: ${output}`));
    });
  });
  return { child, pid: child.pid!, ready } satisfies Service;
}

/** SIGTERM, then SIGKILL after 20 s; resolves when it has exited. */
async function stopProcess(s: Service): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  const exited = once(s.child, "exit");
  s.child.kill("SIGTERM");
  const timer = setTimeout(() => s.child.kill("SIGKILL"), 20_000);
  await exited;
  clearTimeout(timer);
}

/** Samples the RSS of `pids` every 100 ms until stopped; keeps each one's peak. */
function rssSampler(pids: number[]) {
  const peak = pids.map(() => 0);
  const timer = setInterval(() => {
    pids.forEach((pid, i) => {
      const r = rssMiB(pid);
      if (r > peak[i]!) peak[i] = r;
    });
  }, 100);
  return {
    stop(): number[] {
      clearInterval(timer);
      return peak.map((p) => round(p, 1));
    },
  };
}

const BIN = path.resolve("bin", "fusillade.js");

/** Resident memory of a control plane and a dispatcher holding `concurrency` requests. */
export async function memoryScenario(bench: Bench): Promise<Record<string, unknown>> {
  const concurrency = scaled(10_000, 100);
  const requests = 2 * concurrency;
  const up = new BenchUpstream(LATENCY_MS);
  await up.start();
  const services: Service[] = [];
  try {
    const cp = await startProcess(
      [BIN, "control-plane", "--listen", "127.0.0.1:0"].concat([
        "--database-url",
        bench.databaseUrl,
        "--log-level",
        "warn",
      ]),
      /control plane listening on (\S+)/,
      "stderr",
    );
    services.push(cp);
    const api = clients(cp.ready);
    await api.admin.setModelLimit({ model: MODEL, limit: concurrency });
    const d = await startProcess(
      [BIN, "dispatcher", "--control-plane", cp.ready, "--capacity", String(BENCH_CAPACITY)].concat(
        ["--models", MODEL, "--log-level", "warn"],
      ),
      /dispatcher \S+ taking work/,
      "stderr",
    );
    services.push(d);
    await sleep(1000);
    const idle = { control_plane: round(rssMiB(cp.pid), 1), dispatcher: round(rssMiB(d.pid), 1) };

    const fileId = await upload(api.batch, jsonl(requests, [MODEL], PAD), up.url);
    up.reset();
    const sampler = rssSampler([cp.pid, d.pid]);
    const { batch } = await api.batch.createBatch({ fileId });
    await waitFinished(api.batch, batch!.id);
    const [cpPeak, dPeak] = sampler.stop();
    const held = up.of(MODEL).peak;
    if (held > concurrency) {
      bench.failures.push(`memory: the upstream saw ${held} in flight (limit ${concurrency})`);
    }
    await stopProcess(d);
    await stopProcess(cp);

    // The ceiling: the same load from a bare undici process.
    up.reset();
    const ceiling = await startProcess(
      [
        path.resolve("dist", "bench", "ceiling-process.js"),
        JSON.stringify({
          url: up.url,
          model: `${MODEL}-ceiling`,
          limit: concurrency,
          requests,
          pad: PAD,
        }),
      ],
      /^(ready)$/m,
      "stdout",
    );
    services.push(ceiling);
    await sleep(500);
    const ceilingIdle = round(rssMiB(ceiling.pid), 1);
    const ceilingSampler = rssSampler([ceiling.pid]);
    const [exitCode] = (await once(ceiling.child, "exit")) as [number | null];
    const [ceilingPeak] = ceilingSampler.stop();
    if (exitCode !== 0) throw new Error(`the ceiling process exited with ${exitCode}`);
    const ceilingHeld = up.of(`${MODEL}-ceiling`).peak;

    // Memory per request held, above the process's idle: fair when the
    // dispatcher holds fewer in flight than the ceiling does.
    const kibEach = (peak: number, idleMiB: number, n: number) =>
      n > 0 ? round(((peak - idleMiB) * 1024) / n, 1) : Number.NaN;
    const dispatcherKib = kibEach(dPeak!, idle.dispatcher, held);
    const ceilingKib = kibEach(ceilingPeak!, ceilingIdle, ceilingHeld);
    return {
      concurrency,
      requests,
      upstream_latency_ms: LATENCY_MS,
      held_in_flight: held,
      held_share: round(held / concurrency, 3),
      rss_mib: {
        control_plane: { idle: idle.control_plane, peak: cpPeak },
        dispatcher: { idle: idle.dispatcher, peak: dPeak },
      },
      ceiling: { held_in_flight: ceilingHeld, rss_mib: { idle: ceilingIdle, peak: ceilingPeak } },
      dispatcher_peak_ratio_to_ceiling: round(dPeak! / ceilingPeak!, 2),
      kib_per_request_held: { dispatcher: dispatcherKib, ceiling: ceilingKib },
      dispatcher_kib_per_request_ratio_to_ceiling: round(dispatcherKib / ceilingKib, 2),
      control_plane_peak_ratio_to_idle: round(cpPeak! / idle.control_plane, 2),
    };
  } finally {
    for (const s of services.reverse()) await stopProcess(s).catch(() => undefined);
    await up.close();
  }
}
