/**
 * The no-database ceiling as a process of its own, for the memory scenario:
 * plain undici loops holding `limit` requests of one model in flight, so its
 * resident memory can be read from /proc beside the dispatcher's.
 * Args: one JSON object {url, model, limit, requests, pad}. Prints "ready",
 * idles a second (the parent reads its idle RSS), runs, exits.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { runCeiling } from "./ceiling.js";

const args = JSON.parse(process.argv[2] ?? "{}") as {
  url: string;
  model: string;
  limit: number;
  requests: number;
  pad: number;
};
process.stdout.write("ready\n");
await sleep(1000);
await runCeiling(
  args.url,
  [{ model: args.model, limit: args.limit, requests: args.requests }],
  args.pad,
);
