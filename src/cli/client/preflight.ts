/**
 * Checks `submit` makes before uploading, for the mistakes that otherwise
 * pass silently until every request has failed: an --endpoint that repeats
 * the lines' path prefix (".../v1" + "/v1/chat/completions" = 404 on
 * /v1/v1/…), no API key at all, and an endpoint nothing listens on.
 * Each finding is a warning; `--strict` turns them into a refusal.
 */
import { createReadStream } from "node:fs";
import net from "node:net";
import { createInterface } from "node:readline";

/** Lines of the file looked at for their urls. */
const SAMPLE_LINES = 50;
/** How long the endpoint gets to accept a TCP connection. */
const PROBE_TIMEOUT_MS = 1_500;

/** The `url` of the first lines of a JSONL file (lines that do not parse are skipped: the server names them). */
export async function sampleUrls(path: string): Promise<string[]> {
  const urls: string[] = [];
  const stream = createReadStream(path, { encoding: "utf8" });
  const lines = createInterface({ input: stream, crlfDelay: Infinity });
  let seen = 0;
  try {
    for await (const line of lines) {
      if (line.trim() === "") continue;
      if (++seen > SAMPLE_LINES) break;
      try {
        const url = (JSON.parse(line) as { url?: unknown }).url;
        if (typeof url === "string") urls.push(url);
      } catch {
        // the server reports the line
      }
    }
  } finally {
    lines.close();
    stream.destroy();
  }
  return urls;
}

/** The endpoint-and-url mistake: the endpoint's path is also the urls' first segment(s). */
export function doubledPrefix(endpoint: string, urls: string[]): string | undefined {
  let base: URL;
  try {
    base = new URL(endpoint);
  } catch {
    return undefined; // the server names a bad endpoint
  }
  const prefix = base.pathname.replace(/\/+$/, "");
  if (prefix === "") return undefined;
  const doubled = urls.find((u) => u === prefix || u.startsWith(`${prefix}/`));
  if (doubled === undefined) return undefined;
  return `--endpoint ends in ${prefix} and the lines' urls start with ${prefix}/ too: requests would go to ${base.origin}${prefix}${doubled} (a 404, most likely); pass --endpoint ${base.origin}`;
}

/** Whether something accepts TCP connections at the endpoint; the error code when not. */
export function probe(endpoint: string): Promise<string | undefined> {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    return Promise.resolve(undefined);
  }
  const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
  const host = url.hostname.replace(/^\[|\]$/g, "");
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, timeout: PROBE_TIMEOUT_MS });
    const done = (result: string | undefined) => {
      socket.destroy();
      resolve(result);
    };
    socket.once("connect", () => done(undefined));
    socket.once("timeout", () => done(`no answer in ${PROBE_TIMEOUT_MS} ms`));
    socket.once("error", (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
  });
}

/** Every warning for this submission, in the order they matter. */
export async function preflight(input: {
  path: string;
  endpoint: string;
  apiKey: string | undefined;
}): Promise<string[]> {
  const warnings: string[] = [];
  const doubled = doubledPrefix(input.endpoint, await sampleUrls(input.path));
  if (doubled) warnings.push(doubled);
  if (input.apiKey === undefined || input.apiKey === "") {
    warnings.push(
      "no API key (--api-key, FUSILLADE_API_KEY or OPENAI_API_KEY): requests are sent without an Authorization header",
    );
  }
  const unreachable = await probe(input.endpoint);
  if (unreachable !== undefined) {
    warnings.push(
      `nothing answers at ${input.endpoint} from this machine (${unreachable}); the dispatchers will send every request there`,
    );
  }
  return warnings;
}
