/**
 * `npm run bench`: end-to-end figures on this machine, printed as a table
 * and written to bench/results/latest.json. Recorded runs: bench/RESULTS.md.
 *
 * 1. upload: a 50,000-line JSONL (~1 KiB a line) through streamed UploadFile;
 * 2. snapshot: CreateBatch of that file (50,000 requests in one statement);
 * 3. cancel: CancelBatch of that batch (50,000 pending → canceled);
 * 4. dispatch: N requests over two models (limit L each) against a loopback
 *    upstream with a fixed latency; one dispatcher, then three. Reported:
 *    wall time, requests/s, the upstream's peak in-flight per model (must be
 *    ≤ L) and its mean in-flight while busy (how well the limit is used).
 *
 * Env: BENCH_DATABASE_URL (default: an embedded Postgres in a temp dir),
 * BENCH_REQUESTS (default 20000), BENCH_LIMIT (100), BENCH_LATENCY_MS (20),
 * BENCH_LINGER_MS (the dispatchers' report linger; default theirs).
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { CONTROL_PLANE_DEFAULTS } from "../src/config/config.js";
import { resolveDispatcherConfig } from "../src/config/dispatcher-config.js";
import { startControlPlane } from "../src/control-plane.js";
import { startDispatcher } from "../src/dispatcher/dispatcher.js";
import { AdminService } from "../src/gen/fusillade/v1/admin_service_pb.js";
import { BatchService, UploadFileRequestSchema } from "../src/gen/fusillade/v1/batch_service_pb.js";
import { makeLogger } from "../src/logger.js";
import { BenchUpstream } from "./upstream.js";

const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 20_000);
const LIMIT = Number(process.env.BENCH_LIMIT ?? 100);
const LATENCY_MS = Number(process.env.BENCH_LATENCY_MS ?? 20);
/** Dispatcher report linger; unset keeps the dispatcher's default. */
const LINGER_MS =
  process.env.BENCH_LINGER_MS === undefined ? undefined : Number(process.env.BENCH_LINGER_MS);
const UPLOAD_LINES = 50_000;
const CHUNK = 1024 * 1024;

const log = makeLogger("warn");

function jsonl(n: number, models: string[], pad: number): Buffer {
  const filler = "x".repeat(pad);
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const model = models[i % models.length]!;
    lines.push(
      JSON.stringify({
        custom_id: `req-${i}`,
        method: "POST",
        url: "/v1/chat/completions",
        body: { model, messages: [{ role: "user", content: filler }] },
      }),
    );
  }
  return Buffer.from(`${lines.join("\n")}\n`);
}

async function* uploadMessages(content: Buffer, endpoint: string) {
  yield create(UploadFileRequestSchema, {
    part: { case: "header", value: { filename: "bench.jsonl", endpoint, apiKey: "sk-bench" } },
  });
  for (let o = 0; o < content.length; o += CHUNK) {
    yield create(UploadFileRequestSchema, {
      part: { case: "chunk", value: content.subarray(o, o + CHUNK) },
    });
  }
}

async function main() {
  const results: Record<string, unknown> = {
    date: new Date().toISOString(),
    machine: `${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
  };
  const tmp = await mkdtemp(path.join(os.tmpdir(), "fusillade-bench-"));
  await import("node:fs/promises").then((fs) => fs.chmod(tmp, 0o755));
  const upstream = new BenchUpstream(LATENCY_MS);
  await upstream.start();
  const cp = await startControlPlane(
    {
      ...CONTROL_PLANE_DEFAULTS,
      port: 0,
      dataDir: tmp,
      databaseUrl: process.env.BENCH_DATABASE_URL,
      logLevel: "warn",
    },
    log,
  );
  const transport = createConnectTransport({ baseUrl: cp.url, httpVersion: "2" });
  const batch = createClient(BatchService, transport);
  const admin = createClient(AdminService, transport);
  try {
    // 1. upload
    const big = jsonl(UPLOAD_LINES, ["bench-upload"], 900);
    let t0 = performance.now();
    const up = await batch.uploadFile(uploadMessages(big, upstream.url));
    const uploadS = (performance.now() - t0) / 1000;
    results.upload = {
      lines: UPLOAD_LINES,
      mib: +(big.length / 2 ** 20).toFixed(1),
      seconds: +uploadS.toFixed(2),
      mib_per_s: +(big.length / 2 ** 20 / uploadS).toFixed(1),
    };
    // 2. snapshot
    t0 = performance.now();
    const snap = await batch.createBatch({ fileId: up.file!.id });
    const snapshotS = (performance.now() - t0) / 1000;
    // 3. cancel: 50,000 pending requests end in one statement (trigger: counters, events).
    t0 = performance.now();
    await batch.cancelBatch({ batchId: snap.batch!.id });
    const cancelS = (performance.now() - t0) / 1000;
    results.snapshot = { requests: UPLOAD_LINES, seconds: +snapshotS.toFixed(2) };
    results.cancel = { requests: UPLOAD_LINES, seconds: +cancelS.toFixed(2) };

    // 4. dispatch
    const models = ["bench-a", "bench-b"];
    for (const m of models) await admin.setModelLimit({ model: m, limit: LIMIT });
    const file = await batch.uploadFile(uploadMessages(jsonl(REQUESTS, models, 100), upstream.url));
    results.dispatch = [];
    for (const dispatchers of [1, 3]) {
      upstream.reset();
      const ds = Array.from({ length: dispatchers }, (_, i) =>
        startDispatcher(
          resolveDispatcherConfig({
            controlPlaneUrl: cp.url,
            capacity: 256,
            id: `bench-${i}`,
            logLevel: "warn",
          }),
          log,
        ),
      );
      t0 = performance.now();
      const { batch: b } = await batch.createBatch({ fileId: file.file!.id });
      for await (const w of batch.watchBatch({ batchId: b!.id })) {
        if (w.batch?.finishTime) break;
      }
      const wall = (performance.now() - t0) / 1000;
      const status = await batch.getBatchStatus({ batchId: b!.id });
      await Promise.all(ds.map((d) => d.stop(1000)));
      const perModel = Object.fromEntries(
        [...upstream.load].map(([m, l]) => [
          m,
          {
            peak: l.peak,
            mean_in_flight_busy: +(l.inFlightMs / Math.max(1, l.busyMs)).toFixed(1),
            delivered: l.delivered,
          },
        ]),
      );
      (results.dispatch as unknown[]).push({
        dispatchers,
        requests: REQUESTS,
        limit_per_model: LIMIT,
        upstream_latency_ms: LATENCY_MS,
        seconds: +wall.toFixed(2),
        requests_per_s: Math.round(REQUESTS / wall),
        ideal_requests_per_s: Math.round((models.length * LIMIT * 1000) / LATENCY_MS),
        completed: Number(status.counts!.completed),
        upstream: perModel,
      });
    }
  } finally {
    await cp.close();
    await upstream.close();
    await rm(tmp, { recursive: true, force: true });
  }
  await mkdir(path.join("bench", "results"), { recursive: true });
  await writeFile(
    path.join("bench", "results", "latest.json"),
    `${JSON.stringify(results, null, 2)}\n`,
  );
  console.log(JSON.stringify(results, null, 2));
}

await main();
