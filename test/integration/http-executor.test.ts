import { once } from "node:events";
import {
  createServer,
  type IncomingMessage,
  type RequestListener,
  type Server,
  type ServerResponse,
} from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { performance } from "node:perf_hooks";
import { afterEach, describe, expect, it } from "vitest";
import { HttpExecutor, type OutboundRequest } from "../../src/http/executor.js";

const API_KEY = "sk-test-0123456789abcdefSECRET";
const decoder = new TextDecoder();
/**
 * How late a timer or an abort may be on a loaded 2-core machine. The deadlines these
 * tests check are the executor's own timers (undici's are off): without them an attempt
 * would wait forever, so a bound of seconds still tells them apart.
 */
const SLACK_MS = 2000;

/** A loopback upstream that records what it saw. */
interface Upstream {
  url: string;
  server: Server;
  /** Every TCP connection accepted, in order. */
  connections: Socket[];
  /** Resolves with the next request to arrive (and its response, for stalling tests). */
  nextRequest(): Promise<{ req: IncomingMessage; res: ServerResponse; body: string }>;
}

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Starts an upstream on 127.0.0.1:0 with `handler`; closed after the test. */
async function startUpstream(
  handler: (req: IncomingMessage, res: ServerResponse, body: string) => void,
): Promise<Upstream> {
  const connections: Socket[] = [];
  const waiters: Array<(r: { req: IncomingMessage; res: ServerResponse; body: string }) => void> =
    [];
  const listener: RequestListener = (req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      waiters.shift()?.({ req, res, body });
      handler(req, res, body);
    });
  };
  const server = createServer(listener);
  server.on("connection", (s: Socket) => connections.push(s));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  cleanups.push(async () => {
    server.closeAllConnections();
    server.close();
    await once(server, "close");
  });
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    connections,
    nextRequest: () => new Promise((resolve) => waiters.push(resolve)),
  };
}

/** A fresh executor, closed after the test. */
function setup(options: ConstructorParameters<typeof HttpExecutor>[0] = {}): HttpExecutor {
  const executor = new HttpExecutor(options);
  cleanups.push(() => executor.close());
  return executor;
}

function post(url: string, body = '{"model":"m","input":"hi"}'): OutboundRequest {
  return {
    method: "POST",
    url,
    headers: [
      ["authorization", `Bearer ${API_KEY}`],
      ["content-type", "application/json"],
      ["x-request-id", "req-42"],
    ],
    body,
  };
}

/** Resolves with the time a socket closed (not `once`, which rejects on the "error" a reset emits). */
function closed(socket: Socket): Promise<number> {
  return new Promise((resolve) => {
    if (socket.destroyed) resolve(performance.now());
    else socket.once("close", () => resolve(performance.now()));
  });
}

/** A port that refuses connections: bound, then released. */
async function closedPort(): Promise<number> {
  const s = createServer().listen(0, "127.0.0.1");
  await once(s, "listening");
  const { port } = s.address() as AddressInfo;
  s.close();
  await once(s, "close");
  return port;
}

describe("HttpExecutor", () => {
  it("returns a completion with the full body and the allowlisted headers", async () => {
    const up = await startUpstream((_req, res) => {
      res.setHeader("content-type", "application/json");
      res.setHeader("x-request-id", "up-1");
      res.setHeader("openai-processing-ms", "12");
      res.setHeader("x-ratelimit-remaining-requests", "99");
      res.setHeader("set-cookie", "session=abc");
      res.setHeader("x-internal", "no");
      res.end('{"ok":true}');
    });
    const outcome = await setup().execute(post(`${up.url}/v1/chat?key=q`));
    expect(outcome).toMatchObject({ kind: "completion", statusCode: 200 });
    if (outcome.kind !== "completion") throw new Error("unreachable");
    expect(decoder.decode(outcome.body)).toBe('{"ok":true}');
    expect(outcome.headers).toEqual({
      "content-type": "application/json",
      "x-request-id": "up-1",
      "openai-processing-ms": "12",
      "x-ratelimit-remaining-requests": "99",
    });
  });

  it("sends method, path with query, body and request headers (Authorization included)", async () => {
    const up = await startUpstream((_req, res) => res.end("ok"));
    const arrived = up.nextRequest();
    await setup().execute(post(`${up.url}/v1/chat/completions?api-version=2`, '{"a":1}'));
    const { req, body } = await arrived;
    expect(req.method).toBe("POST");
    expect(req.url).toBe("/v1/chat/completions?api-version=2");
    expect(req.headers.authorization).toBe(`Bearer ${API_KEY}`);
    expect(req.headers["x-request-id"]).toBe("req-42");
    expect(body).toBe('{"a":1}');
  });

  it("turns a 500 into a retriable http_error with a bounded excerpt", async () => {
    const big = "E".repeat(10_000);
    const up = await startUpstream((_req, res) => {
      res.statusCode = 500;
      res.end(big);
    });
    const outcome = await setup({ bodyExcerptBytes: 100 }).execute(post(`${up.url}/x`));
    expect(outcome).toMatchObject({
      kind: "failure",
      code: "http_error",
      statusCode: 500,
      retriable: true,
    });
    if (outcome.kind !== "failure") throw new Error("unreachable");
    expect(outcome.bodyExcerpt.byteLength).toBe(100);
    expect(decoder.decode(outcome.bodyExcerpt)).toBe("E".repeat(100));
    expect(outcome.retryAfterMs).toBeUndefined();
  });

  it("turns a 400 into a non-retriable http_error keeping the body", async () => {
    const up = await startUpstream((_req, res) => {
      res.statusCode = 400;
      res.setHeader("content-type", "application/json");
      res.end('{"error":{"message":"bad model"}}');
    });
    const outcome = await setup().execute(post(`${up.url}/x`));
    expect(outcome).toMatchObject({
      kind: "failure",
      code: "http_error",
      statusCode: 400,
      retriable: false,
      headers: { "content-type": "application/json" },
    });
    if (outcome.kind !== "failure") throw new Error("unreachable");
    expect(decoder.decode(outcome.bodyExcerpt)).toBe('{"error":{"message":"bad model"}}');
    expect(outcome.message).toContain("400");
    expect(JSON.stringify(outcome)).not.toContain(API_KEY);
  });

  it("reads Retry-After on a 429", async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(429, { "retry-after": "1", "x-ratelimit-reset-requests": "1s" });
      res.end("slow down");
    });
    const outcome = await setup().execute(post(`${up.url}/x`));
    expect(outcome).toMatchObject({
      kind: "failure",
      code: "http_error",
      statusCode: 429,
      retriable: true,
      retryAfterMs: 1000,
      headers: { "retry-after": "1", "x-ratelimit-reset-requests": "1s" },
    });
  });

  it("honours a custom retriable-status table", async () => {
    const up = await startUpstream((_req, res) => {
      res.statusCode = 409;
      res.end();
    });
    const outcome = await setup({ retriableStatuses: new Set([409]) }).execute(post(up.url));
    expect(outcome).toMatchObject({ code: "http_error", statusCode: 409, retriable: true });
  });

  it("fails response_too_large when a streamed body passes maxResponseBytes, and drops the connection", async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" }); // chunked: no content-length
      const chunk = "x".repeat(16 * 1024);
      const pump = () => {
        while (!res.destroyed && res.write(chunk)) {}
        if (!res.destroyed) res.once("drain", pump);
      };
      pump();
    });
    const outcome = await setup({ maxResponseBytes: 50_000, bodyExcerptBytes: 10 }).execute(
      post(`${up.url}/big`),
    );
    expect(outcome).toMatchObject({
      kind: "failure",
      code: "response_too_large",
      statusCode: 200,
      retriable: false,
    });
    if (outcome.kind !== "failure") throw new Error("unreachable");
    expect(outcome.message).toContain("maxResponseBytes");
    expect(outcome.message).toContain("50000 bytes");
    expect(outcome.bodyExcerpt.byteLength).toBe(10);
    await closed(up.connections[0]!);
  });

  it("fails response_too_large from content-length without reading the body", async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { "content-length": String(1024 * 1024) });
      res.write("y".repeat(1000)); // never finishes
    });
    const outcome = await setup({ maxResponseBytes: 1000 }).execute(post(`${up.url}/big`));
    expect(outcome).toMatchObject({ code: "response_too_large", retriable: false });
    if (outcome.kind !== "failure") throw new Error("unreachable");
    expect(outcome.message).toContain("content-length 1048576");
  });

  it("times out when no response headers arrive within firstByteTimeoutMs", async () => {
    const up = await startUpstream(() => {}); // never answers
    const FIRST_BYTE_MS = 300;
    const executor = setup({ firstByteTimeoutMs: FIRST_BYTE_MS });
    const started = performance.now();
    const outcome = await executor.execute(post(`${up.url}/slow`));
    const elapsed = performance.now() - started;
    expect(outcome).toMatchObject({
      kind: "failure",
      code: "timeout",
      statusCode: 0,
      retriable: true,
    });
    if (outcome.kind !== "failure") throw new Error("unreachable");
    expect(outcome.message).toContain(`firstByteTimeoutMs (${FIRST_BYTE_MS} ms)`);
    expect(outcome.message).not.toContain(API_KEY);
    // A timer may fire a few ms early by performance.now()'s reckoning.
    expect(elapsed).toBeGreaterThanOrEqual(FIRST_BYTE_MS - 10);
    expect(elapsed).toBeLessThan(FIRST_BYTE_MS + SLACK_MS);
  });

  it("times out when the body stalls past totalTimeoutMs", async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write("data: partial\n\n"); // and then nothing
    });
    const TOTAL_MS = 400;
    const executor = setup({ totalTimeoutMs: TOTAL_MS });
    const started = performance.now();
    const outcome = await executor.execute(post(`${up.url}/stream`));
    const elapsed = performance.now() - started;
    expect(outcome).toMatchObject({ code: "timeout", statusCode: 200, retriable: true });
    if (outcome.kind !== "failure") throw new Error("unreachable");
    expect(outcome.message).toContain(`totalTimeoutMs (${TOTAL_MS} ms)`);
    expect(decoder.decode(outcome.bodyExcerpt)).toBe("data: partial\n\n");
    expect(elapsed).toBeGreaterThanOrEqual(TOTAL_MS - 10);
    expect(elapsed).toBeLessThan(TOTAL_MS + SLACK_MS);
  });

  it("reports a refused connection as a retriable network_error", async () => {
    const port = await closedPort();
    const outcome = await setup().execute(post(`http://127.0.0.1:${port}/x`));
    expect(outcome).toMatchObject({
      kind: "failure",
      code: "network_error",
      statusCode: 0,
      retriable: true,
    });
    if (outcome.kind !== "failure") throw new Error("unreachable");
    expect(outcome.message).toContain("ECONNREFUSED");
    expect(outcome.message).not.toContain(API_KEY);
  });

  it("reports an upstream that drops the connection as a retriable network_error", async () => {
    const up = await startUpstream((req) => req.socket.destroy());
    const outcome = await setup().execute(post(`${up.url}/x`));
    expect(outcome).toMatchObject({ code: "network_error", statusCode: 0, retriable: true });
  });

  it("on caller abort returns `aborted` and the upstream sees the socket close promptly", async () => {
    const up = await startUpstream(() => {}); // holds the request open
    const executor = setup();
    const controller = new AbortController();
    const arrived = up.nextRequest();
    const pending = executor.execute(post(`${up.url}/long`), controller.signal);
    const { req } = await arrived;
    const socketClosed = closed(req.socket);
    const abortedAt = performance.now();
    controller.abort(new Error("lease lost"));
    const outcome = await pending;
    const closedAt = await socketClosed;
    expect(outcome).toMatchObject({
      kind: "failure",
      code: "aborted",
      retriable: false,
      statusCode: 0,
    });
    if (outcome.kind !== "failure") throw new Error("unreachable");
    expect(outcome.message).toContain("lease lost");
    // The upstream holds the request forever: only the abort can close the socket.
    expect(closedAt - abortedAt).toBeLessThan(SLACK_MS);
  });

  it("on caller abort while the body streams, still tears the connection down", async () => {
    let sentHeaders!: () => void;
    const headersSent = new Promise<void>((r) => {
      sentHeaders = r;
    });
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write("data: 1\n\n", () => sentHeaders());
    });
    const controller = new AbortController();
    const pending = setup().execute(post(`${up.url}/stream`), controller.signal);
    await headersSent;
    const socketClosed = closed(up.connections[0]!);
    controller.abort();
    const outcome = await pending;
    await socketClosed;
    expect(outcome).toMatchObject({ code: "aborted", retriable: false });
  });

  it("does not send anything when the signal is already aborted", async () => {
    const up = await startUpstream((_req, res) => res.end());
    const outcome = await setup().execute(post(up.url), AbortSignal.abort());
    expect(outcome).toMatchObject({ code: "aborted", retriable: false, statusCode: 0 });
    expect(up.connections).toHaveLength(0);
  });

  it("reuses one keep-alive connection for sequential requests, error bodies included", async () => {
    const up = await startUpstream((req, res) => {
      res.statusCode = req.url === "/fail" ? 503 : 200;
      res.end("body");
    });
    const executor = setup();
    expect((await executor.execute(post(`${up.url}/a`))).kind).toBe("completion");
    expect((await executor.execute(post(`${up.url}/fail`))).kind).toBe("failure");
    expect((await executor.execute(post(`${up.url}/b`))).kind).toBe("completion");
    expect(up.connections).toHaveLength(1);
  });

  it("rejects a URL it cannot send as a non-retriable failure, without throwing", async () => {
    const outcome = await setup().execute({ ...post("x"), url: "not a url" });
    expect(outcome).toMatchObject({ kind: "failure", code: "network_error", retriable: false });
  });

  it("fails attempts made after close() as retriable network errors", async () => {
    const up = await startUpstream((_req, res) => res.end());
    const executor = new HttpExecutor();
    await executor.close();
    const outcome = await executor.execute(post(up.url));
    expect(outcome).toMatchObject({ kind: "failure", code: "network_error", retriable: true });
  });

  it("validates options naming the field", () => {
    expect(() => new HttpExecutor({ firstByteTimeoutMs: 0 })).toThrow(/firstByteTimeoutMs/);
    expect(() => new HttpExecutor({ bodyExcerptBytes: -1 })).toThrow(/bodyExcerptBytes/);
  });
});

describe("an upstream that echoes the request's headers", () => {
  it("gets the API key redacted from the body and the kept headers, on success and on failure", async () => {
    const up = await startUpstream((req, res) => {
      const echo = JSON.stringify({ headers: req.headers, again: req.headers.authorization });
      res.setHeader("content-type", "application/json");
      res.setHeader("x-request-id", String(req.headers.authorization));
      res.statusCode = req.url === "/fail" ? 400 : 200;
      res.end(echo);
    });
    const ex = setup();
    for (const path of ["/ok", "/fail"]) {
      const out = await ex.execute(post(`${up.url}${path}`));
      const body = decoder.decode(out.kind === "completion" ? out.body : out.bodyExcerpt);
      expect(body).not.toContain(API_KEY);
      expect(body.match(/\[redacted\]/g)).toHaveLength(2);
      expect(JSON.stringify(out.headers)).not.toContain(API_KEY);
      expect(JSON.parse(body).headers["x-request-id"]).toBe("req-42"); // not a secret: kept
    }
  });
});
