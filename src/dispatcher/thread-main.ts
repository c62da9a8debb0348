/** The body of a dispatcher thread (see ./thread.ts): runs one dispatcher until told to stop. */
import { parentPort, workerData } from "node:worker_threads";
import { makeLogger } from "../logger.js";
import { DispatcherMetrics } from "../metrics/dispatcher-metrics.js";
import { startDispatcher } from "./dispatcher.js";
import { portLeaseClient } from "./port-transport.js";
import { type FromThread, STATS_INTERVAL_MS, type ThreadData, type ToThread } from "./thread.js";

const port = parentPort!;
const data = workerData as ThreadData;
const config = Object.freeze(data.config);
const cp = data.controlPlanePort;
// Process metrics come from the parent (one process): only the dispatcher's own here.
const dispatcher = startDispatcher(
  config,
  makeLogger(config.logLevel, undefined, data.readableLogs),
  {
    metrics: new DispatcherMetrics(),
    client: cp === undefined ? undefined : portLeaseClient(cp, config.id, config.token),
  },
);
const send = (m: FromThread) => port.postMessage(m);
const timer = setInterval(
  () => send({ type: "stats", stats: dispatcher.stats() }),
  STATS_INTERVAL_MS,
);
port.on("message", (m: ToThread) => {
  if (m.type === "metrics") {
    const id = m.id;
    dispatcher.metrics().then(
      (text) => send({ type: "metrics", id, text }),
      () => send({ type: "metrics", id, text: "" }),
    );
    return;
  }
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
