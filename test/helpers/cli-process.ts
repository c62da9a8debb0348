/**
 * The `fusillade` CLI as a user runs it, for the e2e tests: `node
 * bin/fusillade.js` in a child process (dist/ must be built: buildDist), with
 * helpers to await patterns in its output and its exit, and to write batch files.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { ROOT } from "./build.js";

export const BIN = path.join(ROOT, "bin/fusillade.js");

export interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A running process: a wait for a pattern in its output, and its end. */
export interface Running {
  /** Resolves with the first match of `re` on stdout or stderr (rejects if the process exits first). */
  waitFor(re: RegExp): Promise<RegExpMatchArray>;
  done: Promise<Result>;
  child: ChildProcess;
}

/** Runs the CLI in `cwd` against `server()` (read at each start: the server may start later). */
export function cliRunner(server: () => string, cwd: () => string) {
  /** Starts the CLI with `args`, FUSILLADE_SERVER pointing at the server. */
  const start = (args: string[], env: NodeJS.ProcessEnv = {}): Running => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: cwd(),
      env: {
        PATH: process.env.PATH,
        HOME: process.env.HOME,
        FUSILLADE_SERVER: server(),
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    return watchProcess(child);
  };
  const cli = (args: string[], env?: NodeJS.ProcessEnv): Promise<Result> => start(args, env).done;
  /** Writes a JSONL batch file of `n` lines (custom ids c1…cn); returns its path. */
  const batchFile = async (
    name: string,
    n: number,
    extra: string[] = [],
    model = "gpt-test",
  ): Promise<string> => {
    const lines = Array.from({ length: n }, (_, i) =>
      JSON.stringify({
        custom_id: `c${i + 1}`,
        method: "POST",
        url: "/v1/chat/completions",
        body: { model, messages: [{ role: "user", content: `hello ${i + 1}` }] },
      }),
    );
    const file = path.join(cwd(), name);
    await writeFile(file, `${[...lines, ...extra].join("\n")}\n`);
    return file;
  };
  return { start, cli, batchFile };
}

/** Parses JSON lines. */
export const jsonl = (text: string) =>
  text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as Record<string, unknown>);

/** Collects a child's output; lets a test await patterns in it and its exit. */
export function watchProcess(child: ChildProcess): Running {
  const out = { stdout: "", stderr: "" };
  const listeners = new Set<() => void>();
  let exited = false;
  const onData = (k: "stdout" | "stderr") => (d: Buffer) => {
    out[k] += d.toString();
    for (const l of listeners) l();
  };
  child.stdout!.on("data", onData("stdout"));
  child.stderr!.on("data", onData("stderr"));
  const done = new Promise<Result>((resolve) =>
    child.on("close", (code) => {
      exited = true;
      for (const l of listeners) l();
      resolve({ code, ...out });
    }),
  );
  return {
    done,
    child,
    waitFor: (re) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const m = re.exec(out.stdout) ?? re.exec(out.stderr);
          if (m) {
            listeners.delete(check);
            resolve(m);
          } else if (exited) {
            listeners.delete(check);
            reject(new Error(`exited before ${re}: ${out.stderr}`));
          }
        };
        listeners.add(check);
        check();
      }),
  };
}
