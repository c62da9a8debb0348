/** The body of a dispatcher thread (see ./thread.ts): runs one dispatcher until told to stop. */
import { parentPort, workerData } from "node:worker_threads";
import type { DispatcherConfig } from "../config/dispatcher-config.js";
import { makeLogger } from "../logger.js";
import { startDispatcher } from "./dispatcher.js";
import { type FromThread, STATS_INTERVAL_MS, type ToThread } from "./thread.js";

const port = parentPort!;
const data = workerData as { config: DispatcherConfig; readableLogs: boolean };
const config = Object.freeze(data.config);
const dispatcher = startDispatcher(
  config,
  makeLogger(config.logLevel, undefined, data.readableLogs),
);
const send = (m: FromThread) => port.postMessage(m);
const timer = setInterval(
  () => send({ type: "stats", stats: dispatcher.stats() }),
  STATS_INTERVAL_MS,
);
port.on("message", (m: ToThread) => {
  if (m.type !== "stop") return;
  clearInterval(timer);
  dispatcher.stop(m.graceMs).then(
    () => {
      send({ type: "stopped", stats: dispatcher.stats() });
      port.close();
    },
    (e: unknown) => {
      send({ type: "error", message: String(e) });
      send({ type: "stopped", stats: dispatcher.stats() });
      port.close();
    },
  );
});
