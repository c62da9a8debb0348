/**
 * The metered test upstream (test/helpers/metered-upstream.ts) in a process of its own, as a
 * provider is: in the bench's own process it shared an event loop with the control plane,
 * whose bursts of claims and reports delayed its answers (a 429 "at once" arrived 150–270 ms
 * after its call on a loaded machine), which no provider's meter does to its callers.
 *
 * The parent forks this module; the child starts the upstream and answers its records over
 * the IPC channel.
 */
import { fork } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import {
  type MeteredUpstreamOptions,
  type ModelRecord,
  startMeteredUpstream,
} from "../test/helpers/metered-upstream.js";

type ToChild = { type: "record"; id: number; model: string } | { type: "close" };
type FromChild =
  | { type: "listening"; url: string }
  | { type: "record"; id: number; record: ModelRecord };

/** A metered upstream in its own process: its URL, what a model saw, and its end. */
export interface MeteredProcess {
  readonly url: string;
  record(model: string): Promise<ModelRecord>;
  close(): Promise<void>;
}

/** Forks a metered upstream with `o` and resolves once it listens. */
export async function startMeteredProcess(o: MeteredUpstreamOptions): Promise<MeteredProcess> {
  const child = fork(fileURLToPath(import.meta.url), ["child", JSON.stringify(o)], {
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const waiting = new Map<number, (r: ModelRecord) => void>();
  const listening = new Promise<string>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`metered upstream exited (${code})`)));
    child.on("message", (m: FromChild) => {
      if (m.type === "listening") resolve(m.url);
      else waiting.get(m.id)?.(m.record);
    });
  });
  const url = await listening;
  let next = 0;
  return {
    url,
    record(model) {
      const id = next++;
      return new Promise((resolve) => {
        waiting.set(id, (r) => {
          waiting.delete(id);
          resolve(r);
        });
        child.send({ type: "record", id, model } satisfies ToChild);
      });
    },
    async close() {
      if (child.exitCode !== null) return;
      const exited = once(child, "exit");
      child.send({ type: "close" } satisfies ToChild);
      await exited;
    },
  };
}

async function runChild(o: MeteredUpstreamOptions): Promise<void> {
  const up = await startMeteredUpstream(o);
  process.on("message", (m: ToChild) => {
    if (m.type === "record") {
      process.send?.({ type: "record", id: m.id, record: up.record(m.model) } satisfies FromChild);
    } else {
      void up.close().then(() => process.exit(0));
    }
  });
  // The parent gone (killed, crashed): so is the upstream.
  process.on("disconnect", () => process.exit(0));
  process.send?.({ type: "listening", url: up.url } satisfies FromChild);
}

if (process.argv[2] === "child" && process.send !== undefined) {
  void runChild(JSON.parse(process.argv[3] ?? "{}") as MeteredUpstreamOptions);
}
