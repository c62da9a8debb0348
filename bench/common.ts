/**
 * Helpers shared by the benchmark scenarios: scale, the bench's view of a
 * running control plane (clients, database URL, failed checks), JSONL
 * building and streamed upload, files written with SQL, waiting for a batch, dispatchers restricted
 * to a scenario's models, percentiles and RSS reads.
 */
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import type { MessagePort } from "node:worker_threads";
import { create } from "@bufbuild/protobuf";
import { type Client, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type pg from "pg";
import { resolveDispatcherConfig } from "../src/config/dispatcher-config.js";
import { startDispatcher } from "../src/dispatcher/dispatcher.js";
import { startDispatcherThread } from "../src/dispatcher/thread.js";
import { AdminService } from "../src/gen/fusillade/v1/admin_service_pb.js";
import { BatchService, UploadFileRequestSchema } from "../src/gen/fusillade/v1/batch_service_pb.js";
import { makeLogger } from "../src/logger.js";
import { requestBody } from "./ceiling.js";

/** `BENCH_SCALE=smoke`: every scenario at about 1 % of its size, for CI. */
export const SMOKE = process.env.BENCH_SCALE === "smoke";

/** `full` normally, `smoke` under BENCH_SCALE=smoke. */
export function scaled(full: number, smoke: number): number {
  return SMOKE ? smoke : full;
}

export const log = makeLogger("warn");

/**
 * A dispatcher's lease capacity in the bench: far above every model limit
 * used, so only the limits (the thing measured) bound concurrency.
 */
export const BENCH_CAPACITY = 10_000;

export type BatchClient = Client<typeof BatchService>;
export type AdminClient = Client<typeof AdminService>;

/** What every scenario gets: a control plane, its database, and a list of failed checks. */
export interface Bench {
  cpUrl: string;
  /** The control plane's in-process link, as serve's dispatcher thread has it (a new port each call). */
  dispatcherLink: () => { port: MessagePort; token: string };
  databaseUrl: string;
  batch: BatchClient;
  admin: AdminClient;
  /** Invariant violations; any makes the bench exit non-zero. */
  failures: string[];
}

/** Connect clients of the control plane at `url` (HTTP/2). */
export function clients(url: string): { batch: BatchClient; admin: AdminClient } {
  const transport = createConnectTransport({ baseUrl: url, httpVersion: "2" });
  return {
    batch: createClient(BatchService, transport),
    admin: createClient(AdminService, transport),
  };
}

/** `n` OpenAI batch lines, round-robin over `models`, custom ids `req-0…`, bodies padded by `pad` bytes. */
export function jsonl(n: number, models: readonly string[], pad: number): Buffer {
  const filler = "x".repeat(pad);
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const model = models[i % models.length]!;
    lines.push(
      JSON.stringify({
        custom_id: `req-${i}`,
        method: "POST",
        url: "/v1/chat/completions",
        body: requestBody(model, filler),
      }),
    );
  }
  return Buffer.from(`${lines.join("\n")}\n`);
}

/**
 * `n` OpenAI chat lines, custom ids `req-0…`, each of `modelOf(i)` with one user message
 * `contentOf(i)` and max_tokens 16.
 */
export function chatJsonl(
  n: number,
  modelOf: (i: number) => string,
  contentOf: (i: number) => string,
): string {
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    lines.push(
      JSON.stringify({
        custom_id: `req-${i}`,
        method: "POST",
        url: "/v1/chat/completions",
        body: {
          model: modelOf(i),
          messages: [{ role: "user", content: contentOf(i) }],
          max_tokens: 16,
        },
      }),
    );
  }
  return `${lines.join("\n")}\n`;
}

const CHUNK = 1024 * 1024;

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

/** Streams `content` up with UploadFile in 1 MiB chunks; the new file's id. */
export async function upload(
  batch: BatchClient,
  content: Buffer,
  endpoint: string,
): Promise<string> {
  const res = await batch.uploadFile(uploadMessages(content, endpoint));
  return res.file!.id;
}

/**
 * Writes a file of `n` templates of `model` with SQL (custom ids `req-1…`, a
 * short chat body, an endpoint nobody answers), inside the caller's
 * transaction; its id. For scenarios whose batches are written with SQL too.
 */
export async function sqlFile(
  client: pg.Client,
  n: number,
  model: string,
  filename: string,
): Promise<string> {
  const file = await client.query<{ id: string }>(
    `INSERT INTO files (filename, template_count, size_bytes, models)
     VALUES ($3, $1, $1 * 120, $2) RETURNING id`,
    [n, [model], filename],
  );
  const fileId = file.rows[0]!.id;
  await client.query(
    `INSERT INTO request_templates (file_id, line, custom_id, endpoint, method, path, body, model)
     SELECT $1, g, 'req-' || g, 'http://127.0.0.1:9', 'POST', '/v1/chat/completions',
       '{"model":"' || $3 || '","messages":[{"role":"user","content":"hi"}]}', $3
     FROM generate_series(1, $2) g`,
    [fileId, n, model],
  );
  return fileId;
}

/** Resolves when the batch has finished (WatchBatch). */
export async function waitFinished(batch: BatchClient, batchId: string): Promise<void> {
  for await (const w of batch.watchBatch({ batchId })) {
    if (w.batch?.finishTime) return;
  }
  throw new Error(`WatchBatch of ${batchId} ended before the batch finished`);
}

/**
 * BENCH_DISPATCHER: how the dispatcher reaches the control plane. Default: on its own thread
 * over the control plane's MessagePort, as `serve` runs it; `http2`: on its own thread over
 * HTTP/2, as a separate dispatcher process does; `inline`: on the bench's own event loop,
 * over HTTP/2 (to compare).
 */
const DISPATCHER_MODE = process.env.BENCH_DISPATCHER ?? "port";
/** BENCH_PREFETCH: the dispatchers' prefetch (default: theirs). */
const PREFETCH =
  process.env.BENCH_PREFETCH === undefined ? undefined : Number(process.env.BENCH_PREFETCH);

/**
 * A dispatcher that serves only `models`, with capacity far above their limits, on its own
 * thread in this process calling the control plane over its MessagePort, as `serve` runs
 * one (docs/architecture.md, "serve's two threads"); see BENCH_DISPATCHER for the others.
 */
export function benchDispatcher(
  bench: Bench,
  models: readonly string[],
  id: string,
): ReturnType<typeof startDispatcher> {
  const link = DISPATCHER_MODE === "port" ? bench.dispatcherLink() : undefined;
  const config = resolveDispatcherConfig({
    controlPlaneUrl: bench.cpUrl,
    capacity: BENCH_CAPACITY,
    prefetch: PREFETCH,
    models,
    id,
    logLevel: "warn",
    ...(link === undefined ? {} : { token: link.token }),
  });
  if (DISPATCHER_MODE === "inline") return startDispatcher(config, log);
  return startDispatcherThread(config, log, { controlPlanePort: link?.port });
}

/** Milliseconds since `t0` (performance.now()). */
export function since(t0: number): number {
  return performance.now() - t0;
}

/** The p-th percentile (0–100) of `xs`, nearest rank; NaN when empty. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export interface Spread {
  n: number;
  p50_ms: number;
  p99_ms: number;
}

/** p50 and p99 of `ms`, rounded to 0.01 ms. */
export function spread(ms: readonly number[]): Spread {
  return {
    n: ms.length,
    p50_ms: round(percentile(ms, 50), 2),
    p99_ms: round(percentile(ms, 99), 2),
  };
}

/** `x` rounded to `digits` decimals. */
export function round(x: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** VmRSS of process `pid` in MiB, from /proc/<pid>/status; NaN once it is gone. */
export function rssMiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}
