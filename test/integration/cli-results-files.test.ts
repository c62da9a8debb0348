/**
 * `fusillade results --output/--errors` (downloadResults): a path that is not
 * a regular file (a FIFO here, standing in for /dev/null or /dev/stdout) is
 * written into, never replaced; a regular file that is replaced keeps its mode.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chmod, lstat, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Connection, connect } from "../../src/cli/client/connection.js";
import { downloadResults } from "../../src/cli/client/results.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

let t: TestControlPlane;
let conn: Connection;
let dir: string;
const readers: ChildProcess[] = [];

beforeAll(async () => {
  t = await startTestControlPlane();
  conn = connect(t.url);
  dir = await mkdtemp(path.join(os.tmpdir(), "fusillade-results-"));
});

afterAll(async () => {
  for (const r of readers) if (r.exitCode === null) r.kill();
  conn?.close();
  await t?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A batch of `n` requests, cancelled: `n` error lines, no output lines. */
async function cancelledBatch(n: number): Promise<string> {
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({ custom_id: `c${i + 1}`, method: "POST", url: "/v1/x", body: { model: "m" } }),
  );
  const { file } = await t.batch.createFile({
    endpoint: "http://127.0.0.1:9",
    jsonl: new TextEncoder().encode(lines.join("\n")),
  });
  const id = (await t.batch.createBatch({ fileId: file?.id })).batch?.id ?? "";
  await t.batch.cancelBatch({ batchId: id });
  return id;
}

/** A FIFO in the temp folder and a `cat` reading it: resolves with what it read. */
function fifoWithReader(name: string): { path: string; read: Promise<string> } {
  const p = path.join(dir, name);
  const made = spawnSync("mkfifo", [p]);
  if (made.status !== 0) throw new Error(`mkfifo failed: ${made.stderr}`);
  const cat = spawn("cat", [p], { stdio: ["ignore", "pipe", "ignore"] });
  readers.push(cat);
  let text = "";
  cat.stdout.on("data", (d: Buffer) => {
    text += d.toString();
  });
  return { path: p, read: new Promise((resolve) => cat.on("close", () => resolve(text))) };
}

describe("downloadResults to files", () => {
  it("writes into a FIFO without replacing it, and keeps a replaced file's mode 0600", async () => {
    const id = await cancelledBatch(3);
    const fifo = fifoWithReader("errors.fifo");
    const output = path.join(dir, "out-0600.jsonl");
    await writeFile(output, "old\n");
    await chmod(output, 0o600);
    const counts = await downloadResults(conn, id, { output, errors: fifo.path });
    expect(counts).toEqual({ output: 0, errors: 3 });
    expect((await lstat(fifo.path)).isFIFO()).toBe(true);
    const read = await fifo.read;
    expect(read.trim().split("\n")).toHaveLength(3);
    expect((await stat(output)).mode & 0o777).toBe(0o600);
    expect(await readFile(output, "utf8")).toBe("");
  });

  it("keeps mode 0640 of a replaced regular file, and leaves no temporary file", async () => {
    const id = await cancelledBatch(2);
    const errors = path.join(dir, "errors-0640.jsonl");
    await writeFile(errors, "old\n");
    await chmod(errors, 0o640);
    const fifo = fifoWithReader("out.fifo");
    await downloadResults(conn, id, { output: fifo.path, errors });
    expect((await stat(errors)).mode & 0o777).toBe(0o640);
    expect((await readFile(errors, "utf8")).trim().split("\n")).toHaveLength(2);
    expect((await lstat(fifo.path)).isFIFO()).toBe(true);
    expect(await fifo.read).toBe("");
    expect((await readdir(dir)).filter((f) => f.includes("partial"))).toEqual([]);
  });
});
