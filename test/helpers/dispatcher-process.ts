/**
 * Dispatchers in tests. The `fusillade` CLI in a child process, straight from the TypeScript
 * sources (no build): a module hook transpiles `.ts` with the project's own
 * `typescript` (`transpileModule`, so no type checking), kept in a cache across
 * processes and runs, and maps `./x.js` imports to `./x.ts`. Used to run dispatchers (and control
 * planes) as real processes that can be sent SIGKILL and SIGTERM.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { existsSync, mkdirSync, renameSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import type pg from "pg";
import {
  DISPATCHER_DEFAULTS,
  type DispatcherConfig,
  resolveDispatcherConfig,
} from "../../src/config/dispatcher-config.js";
import { type Dispatcher, startDispatcher } from "../../src/dispatcher/dispatcher.js";
import type { AttemptOutcome } from "../../src/domain/outcome.js";
import type {
  BatchService,
  GetBatchStatusResponse,
} from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { HttpExecutor, type OutboundRequest } from "../../src/http/executor.js";
import { makeLogger } from "../../src/logger.js";
import { TEST_SECRET_KEY } from "./control-plane.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const MAIN = path.join(ROOT, "src/cli/main.ts");

/**
 * The module hooks: transpile `.ts`, resolve `./x.js` to `./x.ts`. Each transpiled module is
 * kept in `cacheDir`, named after the hash of its path and source: a process whose modules
 * are all there never loads `typescript` (~3 s of CPU a start without the cache, ~0.4 s with
 * it; e2e files start dozens of processes).
 */
const HOOKS = (
  typescriptUrl: string,
  cacheDir: string,
) => `import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const cacheDir = ${JSON.stringify(cacheDir)};
let ts;

export async function resolve(specifier, context, next) {
  if (context.parentURL?.endsWith(".ts") && specifier.startsWith(".") && specifier.endsWith(".js")) {
    const js = new URL(specifier, context.parentURL);
    if (!existsSync(js)) {
      const tsUrl = new URL(specifier.slice(0, -3) + ".ts", context.parentURL);
      if (existsSync(tsUrl)) return { url: tsUrl.href, format: "module", shortCircuit: true };
    }
  }
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (!url.startsWith("file:") || !url.endsWith(".ts")) return next(url, context);
  const fileName = fileURLToPath(url);
  const source = await readFile(fileName, "utf8");
  const key = createHash("sha256").update(fileName).update(":").update(source).digest("hex");
  const cached = path.join(cacheDir, key + ".js");
  try {
    return { format: "module", source: await readFile(cached, "utf8"), shortCircuit: true };
  } catch {}
  ts ??= (await import(${JSON.stringify(typescriptUrl)})).default;
  const out = ts.transpileModule(source, {
    fileName,
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2022,
      experimentalDecorators: true,
      emitDecoratorMetadata: true,
      verbatimModuleSyntax: true,
      inlineSourceMap: true,
    },
  });
  // Processes may transpile the same module at once: write aside, then rename (a regular
  // file in our own folder, replaced whole).
  const tmp = cached + "." + process.pid + ".tmp";
  await writeFile(tmp, out.outputText);
  await rename(tmp, cached);
  return { format: "module", source: out.outputText, shortCircuit: true };
}
`;

let registerFile: string | undefined;

/**
 * Writes the hook modules (once; in a folder named after their content, so
 * runs share it and nothing piles up in tmpdir); returns the `--import` file.
 */
function loader(): string {
  if (registerFile) return registerFile;
  const require = createRequire(import.meta.url);
  const typescript = pathToFileURL(require.resolve("typescript")).href;
  // The folder is named after the hooks and the compiler's version, so a new `typescript`
  // (same path, other output) starts an empty cache.
  const { version } = require("typescript/package.json") as { version: string };
  const hash = createHash("sha256")
    .update(HOOKS(typescript, ""))
    .update(version)
    .digest("hex")
    .slice(0, 12);
  const dir = path.join(os.tmpdir(), `fusillade-ts-loader-${hash}`);
  const hooks = HOOKS(typescript, path.join(dir, "cache"));
  const hooksFile = path.join(dir, "hooks.mjs");
  const register = `import { register } from "node:module";\nregister(${JSON.stringify(pathToFileURL(hooksFile).href)});\n`;
  mkdirSync(path.join(dir, "cache"), { recursive: true });
  // Parallel test files may write at once: write aside, then rename (atomic).
  for (const [name, text] of [
    ["hooks.mjs", hooks],
    ["register.mjs", register],
  ] as const) {
    const target = path.join(dir, name);
    if (existsSync(target)) continue;
    const tmp = `${target}.${process.pid}.tmp`;
    writeFileSync(tmp, text);
    renameSync(tmp, target);
  }
  registerFile = path.join(dir, "register.mjs");
  return registerFile;
}

/** A `fusillade` child process. */
export interface FusilladeProcess {
  child: ChildProcess;
  pid: number;
  /** Everything it wrote to stderr so far (pino JSON lines and CLI messages). */
  stderr(): string;
  /** Resolves when a stderr line matches `pattern`; rejects on exit or after `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Resolves when the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends `signal` (default SIGTERM) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Runs `fusillade <args…>` from the sources. */
export function spawnFusillade(args: string[], env: NodeJS.ProcessEnv = {}): FusilladeProcess {
  const child = spawn(process.execPath, ["--import", loader(), MAIN, ...args], {
    cwd: ROOT,
    // The tests' key unless the test gives its own (see TEST_SECRET_KEY).
    env: { ...process.env, FUSILLADE_SECRET_KEY: TEST_SECRET_KEY, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let text = "";
  let exitedFlag = false;
  const watchers = new Set<() => void>();
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => {
    text += chunk;
    if (process.env.FUSILLADE_TEST_CHILD_LOG) process.stderr.write(chunk);
    for (const w of watchers) w();
  });
  const exited = once(child, "exit").then(([code, signal]) => {
    exitedFlag = true;
    for (const w of watchers) w();
    return { code: code as number | null, signal: signal as NodeJS.Signals | null };
  });
  return {
    child,
    pid: child.pid!,
    stderr: () => text,
    exited,
    waitFor(pattern, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = text.match(pattern);
          if (m) {
            done();
            resolve(m);
          } else if (exitedFlag) {
            done();
            reject(
              new Error(`fusillade ${args[0]} exited before ${pattern}:\n${text.slice(-4000)}`),
            );
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(
            new Error(
              `fusillade ${args[0]}: no ${pattern} within ${timeoutMs} ms:\n${text.slice(-4000)}`,
            ),
          );
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          watchers.delete(check);
        };
        watchers.add(check);
        check();
      });
    },
    async stop(signal = "SIGTERM") {
      if (!exitedFlag) child.kill(signal);
      return exited;
    },
  };
}

/** Options of {@link startDispatcherProcess}. */
export interface DispatcherProcessOptions {
  controlPlane: string;
  id: string;
  capacity?: number;
  models?: string[];
  /** Extra flags, e.g. ["--shutdown-grace", "2s"]. */
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

/**
 * Claims a dispatcher holding `slots` of a model buffers beyond them (at least one): the
 * prefetch's share of its slots, the default one unless given.
 */
export function bufferedClaims(slots: number, prefetch = DISPATCHER_DEFAULTS.prefetch): number {
  return Math.max(1, Math.ceil(slots * prefetch));
}

/** Starts `fusillade dispatcher` and waits until it has started its loops. */
export async function startDispatcherProcess(
  opts: DispatcherProcessOptions,
): Promise<FusilladeProcess> {
  const args = ["dispatcher", "--control-plane", opts.controlPlane, "--id", opts.id];
  if (opts.capacity !== undefined) args.push("--capacity", String(opts.capacity));
  if (opts.models) args.push("--models", opts.models.join(","));
  const p = spawnFusillade([...args, ...(opts.args ?? [])], {
    FUSILLADE_LOG_LEVEL: process.env.FUSILLADE_TEST_CHILD_LOG_LEVEL ?? "info",
    ...opts.env,
  });
  try {
    await p.waitFor(/"msg":"dispatcher started"/, PROCESS_START_MS);
  } catch (err) {
    // The caller never gets it to stop: do not leave it running.
    await p.stop("SIGKILL");
    throw err;
  }
  return p;
}

/**
 * Starts several dispatcher processes at once; if one does not start, stops the others
 * before throwing (the caller gets none of them to stop).
 */
export async function startDispatcherProcesses(
  opts: DispatcherProcessOptions[],
): Promise<FusilladeProcess[]> {
  const started = await Promise.allSettled(opts.map((o) => startDispatcherProcess(o)));
  const failed = started.find((s) => s.status === "rejected");
  if (failed === undefined)
    return started.map((s) => (s as PromiseFulfilledResult<FusilladeProcess>).value);
  await Promise.all(
    started.flatMap((s) => (s.status === "fulfilled" ? [s.value.stop("SIGKILL")] : [])),
  );
  throw failed.reason;
}

/**
 * How long a dispatcher process may take to start before the test gives up on it. The
 * wait ends on its "dispatcher started" line; this only bounds a process that will never
 * start. A start transpiles the TypeScript first: over 20 s was seen with the load average
 * at 21 on the 2-core machine. Below the hooks' 120 s timeout.
 */
const PROCESS_START_MS = 90_000;

// ---------------------------------------------------------------------------
// Dispatchers in the test process, and batch fixtures for dispatch tests.
// ---------------------------------------------------------------------------

/** A dispatcher in this process, with test-friendly defaults; stop it when done. */
export function startTestDispatcher(
  controlPlaneUrl: string,
  options: Partial<DispatcherConfig> = {},
  sender?: string,
): Dispatcher {
  const config = resolveDispatcherConfig({
    controlPlaneUrl,
    capacity: 32,
    shutdownGraceMs: 5_000,
    shutdownFlushMs: 5_000,
    logLevel: process.env.FUSILLADE_TEST_LOG ?? "silent",
    ...options,
  });
  const deps = sender === undefined ? {} : { executor: new SenderTaggingExecutor(sender, config) };
  return startDispatcher(config, makeLogger(config.logLevel), deps);
}

/**
 * An executor that adds `x-test-sender: <sender>` to every request, so that the test
 * upstream can tell in-process dispatchers apart (Delivery.sender): they share a process,
 * so their sockets' ports cannot.
 */
class SenderTaggingExecutor extends HttpExecutor {
  readonly #sender: string;

  constructor(sender: string, config: DispatcherConfig) {
    // The executor's defaults, with a connection per request as the dispatcher's own.
    super({ connectionsPerOrigin: Math.max(256, config.capacity) });
    this.#sender = sender;
  }

  override execute(req: OutboundRequest, signal?: AbortSignal): Promise<AttemptOutcome> {
    return super.execute(
      { ...req, headers: [...req.headers, ["x-test-sender", this.#sender]] },
      signal,
    );
  }
}

/** One request of a test batch. */
export interface TestItem {
  customId: string;
  model: string;
}

/** Items `<prefix>-<i>` of `model`, i = 0..n-1. */
export function items(model: string, n: number, prefix = model): TestItem[] {
  return Array.from({ length: n }, (_, i) => ({ customId: `${prefix}-${i}`, model }));
}

const ms = (n: number) => durationFromMs(n);

/** Creates a file of `list` against `endpoint` and starts a batch of it; returns the batch id. */
export async function createTestBatch(
  batch: Client<typeof BatchService>,
  endpoint: string,
  list: TestItem[],
  policy: {
    maxRetries?: number;
    initialBackoffMs?: number;
    maxBackoffMs?: number;
    /** CreateBatch.priority (docs/fair-share.md). */
    priority?: number;
  } = {},
): Promise<string> {
  const jsonl = list
    .map((it) =>
      JSON.stringify({
        custom_id: it.customId,
        method: "POST",
        url: "/v1/chat/completions",
        body: { model: it.model, messages: [{ role: "user", content: it.customId }] },
      }),
    )
    .join("\n");
  const file = await batch.createFile({
    jsonl: new TextEncoder().encode(jsonl),
    endpoint,
    apiKey: "sk-dispatch-test",
  });
  const res = await batch.createBatch({
    fileId: file.file!.id,
    priority: policy.priority ?? 0,
    retryPolicy: {
      maxRetries: policy.maxRetries,
      initialBackoff: ms(policy.initialBackoffMs ?? 50),
      maxBackoff: ms(policy.maxBackoffMs ?? Math.max(policy.initialBackoffMs ?? 50, 200)),
    },
  });
  return res.batch!.id;
}

/** Request counts of a batch by state, straight from the requests table. */
export async function stateCounts(sql: pg.Pool, batchId: string): Promise<Record<string, number>> {
  const r = await sql.query<{ state: string; n: number }>(
    "SELECT state, count(*)::int AS n FROM requests WHERE batch_id = $1 GROUP BY state",
    [batchId],
  );
  return Object.fromEntries(r.rows.map((row) => [row.state, row.n]));
}

/**
 * Polls the batch's status (WatchBatch is not there yet, so polling is the
 * last resort) until every request is terminal; returns the final status.
 */
export async function waitForBatch(
  batch: Client<typeof BatchService>,
  batchId: string,
  timeoutMs = 45_000,
): Promise<GetBatchStatusResponse> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    let status: GetBatchStatusResponse | undefined;
    try {
      status = await batch.getBatchStatus({ batchId });
    } catch {
      // the control plane may be restarting
    }
    const c = status?.counts;
    if (status && c && c.pending === 0n && c.inProgress === 0n) return status;
    if (Date.now() > end) {
      throw new Error(
        `batch ${batchId} not finished after ${timeoutMs} ms: ${JSON.stringify(c, (_, v) => (typeof v === "bigint" ? Number(v) : v))}`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
