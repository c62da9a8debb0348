/**
 * The API port's connection caps and timeouts (src/api/connection-guard.ts), over real
 * sockets against a real control plane: silent, half-open and idle connections are closed
 * in their time, a stalled body is cut, a connection with a stream in progress is never
 * idle, and a flood of idle connections past the caps cannot keep a new client out.
 */
import { once } from "node:events";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CONNECTION_DEFAULTS, type ConnectionLimits } from "../../src/config/config.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

/** Short enough for a test, long enough that a loaded machine never trips them by accident. */
const LIMITS: ConnectionLimits = {
  ...CONNECTION_DEFAULTS,
  maxConnections: 40,
  maxConnectionsPerClient: 30,
  headersTimeoutMs: 800,
  idleTimeoutMs: 1_200,
  bodyTimeoutMs: 800,
};
/** Far past every limit above: a connection still open then was not closed by its timeout. */
const WELL_PAST_MS = 15_000;

let cp: TestControlPlane;
let port: number;

beforeAll(async () => {
  cp = await startTestControlPlane({ connections: LIMITS });
  port = Number(new URL(cp.url).port);
});
afterAll(async () => {
  await cp?.close();
});

/** A raw socket to the port, and when it closed (ms after connect), or undefined. */
async function rawSocket(): Promise<{ socket: net.Socket; closed: Promise<number> }> {
  const socket = net.connect(port, "127.0.0.1");
  socket.on("error", () => undefined);
  socket.resume();
  await once(socket, "connect");
  const t0 = performance.now();
  const closed = once(socket, "close").then(() => performance.now() - t0);
  return { socket, closed };
}

/** Sends raw bytes on a new connection; what the server answered before it closed. */
async function exchange(bytes: string): Promise<string> {
  const c = await rawSocket();
  let text = "";
  c.socket.setEncoding("utf8");
  c.socket.on("data", (d: string) => {
    text += d;
  });
  c.socket.write(bytes);
  await within(c.closed, "an answer and a close");
  return text;
}

/** Resolves to the ms until `p`, or rejects when it takes longer than WELL_PAST_MS. */
function within<T>(p: Promise<T>, what: string): Promise<T> {
  return Promise.race([
    p,
    new Promise<T>((_, reject) =>
      setTimeout(
        () => reject(new Error(`${what}: still open after ${WELL_PAST_MS} ms`)),
        WELL_PAST_MS,
      ),
    ),
  ]);
}

/** One Health check over HTTP/1.1 on a fresh connection: its HTTP status. */
async function healthOverH1(): Promise<number> {
  const agent = new http.Agent({ keepAlive: false });
  try {
    return await new Promise<number>((resolve, reject) => {
      const req = http.request(
        {
          host: "127.0.0.1",
          port,
          method: "POST",
          path: "/grpc.health.v1.Health/Check",
          headers: { "content-type": "application/json" },
          agent,
        },
        (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
        },
      );
      req.on("error", reject);
      req.end("{}");
    });
  } finally {
    agent.destroy();
  }
}

describe("timeouts", () => {
  it("closes a connection that sends nothing, a partial HTTP/2 preface, or a preface and nothing", async () => {
    const silent = await rawSocket();
    const partial = await rawSocket();
    partial.socket.write("PRI * HTTP/2.0\r\n");
    const preface = await rawSocket();
    preface.socket.write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    const partialHeaders = await rawSocket();
    partialHeaders.socket.write("POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: x\r\n");
    for (const [name, c] of Object.entries({ silent, partial, preface, partialHeaders })) {
      const ms = await within(c.closed, name);
      // Not before its time: the guard waits the headers timeout (timers fire no earlier).
      expect(ms, name).toBeGreaterThanOrEqual(LIMITS.headersTimeoutMs - 50);
    }
  });

  it("ends an idle HTTP/2 session with a GOAWAY after its last call, not during a stream", async () => {
    const session = http2.connect(cp.url);
    session.on("error", () => undefined);
    const goaway = once(session, "goaway");
    // A Health Watch: a server stream that stays quiet while the service stays SERVING.
    const watch = session.request({
      ":method": "POST",
      ":path": "/grpc.health.v1.Health/Watch",
      "content-type": "application/connect+json",
    });
    watch.on("error", () => undefined);
    // An enveloped empty message: flags 0, length 2, "{}".
    watch.end(Buffer.from([0, 0, 0, 0, 2, 0x7b, 0x7d]));
    const firstMessage = once(watch, "data");
    await within(firstMessage, "first Watch message");
    const streamOpenedAt = performance.now();
    let goneAt: number | undefined;
    void goaway.then(() => {
      goneAt = performance.now();
    });
    // Quiet for three idle timeouts with the stream open: the session is busy, not idle.
    await new Promise((r) => setTimeout(r, 3 * LIMITS.idleTimeoutMs));
    expect(goneAt).toBeUndefined();
    expect(session.closed).toBe(false);
    const streamClosedAt = performance.now();
    watch.close();
    await within(goaway, "GOAWAY after the stream closed");
    expect(goneAt! - streamClosedAt).toBeGreaterThanOrEqual(LIMITS.idleTimeoutMs - 50);
    expect(goneAt! - streamOpenedAt).toBeGreaterThan(3 * LIMITS.idleTimeoutMs);
    session.destroy();
  });

  it("cuts a request whose body stops moving", async () => {
    const c = await rawSocket();
    c.socket.write(
      "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
    );
    const ms = await within(c.closed, "stalled body");
    expect(ms).toBeGreaterThanOrEqual(LIMITS.bodyTimeoutMs - 50);
  });
});

describe("requests the adapter cannot read", () => {
  it("answers 400 to a request with no Host, and keeps serving", async () => {
    // HTTP/1.0 lets a request omit Host; Connect's adapter threw on it, outside any promise.
    const noHost = await exchange(
      "POST /grpc.health.v1.Health/Check HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    );
    expect(noHost).toMatch(/^HTTP\/1\.1 400 /);
    expect(noHost).toContain("names no host");
    const emptyHost = await exchange(
      "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: \r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    );
    expect(emptyHost).toMatch(/^HTTP\/1\.1 400 /);
    expect(await healthOverH1()).toBe(200);
  });
});

describe("caps", () => {
  it("a flood of idle connections past both caps cannot keep a new client out", async () => {
    // Three times the per-client cap, all idle (sockets that said nothing yet).
    const flood = await Promise.all(
      Array.from({ length: 3 * LIMITS.maxConnectionsPerClient }, () => rawSocket()),
    );
    // A client with a call in progress on a connection opened before the flood ended is
    // never evicted: a Watch stream again.
    const session = http2.connect(cp.url);
    session.on("error", () => undefined);
    const watch = session.request({
      ":method": "POST",
      ":path": "/grpc.health.v1.Health/Watch",
      "content-type": "application/connect+json",
    });
    watch.on("error", () => undefined);
    watch.end(Buffer.from([0, 0, 0, 0, 2, 0x7b, 0x7d]));
    await within(once(watch, "data"), "Watch under the flood");
    // More flood after it: the busy session must survive evictions.
    const more = await Promise.all(
      Array.from({ length: LIMITS.maxConnectionsPerClient }, () => rawSocket()),
    );
    // New clients get in and are answered, every time.
    for (let i = 0; i < 5; i++) expect(await healthOverH1()).toBe(200);
    expect(session.closed || session.destroyed).toBe(false);
    // The flood was cut down to the cap: all but at most maxConnectionsPerClient closed.
    const all = [...flood, ...more];
    let closed = 0;
    const enough = new Promise<void>((resolve) => {
      for (const c of all) {
        void c.closed.then(() => {
          if (++closed >= all.length - LIMITS.maxConnectionsPerClient) resolve();
        });
      }
    });
    await within(enough, "evictions down to the per-client cap");
    watch.close();
    session.destroy();
    for (const c of all) c.socket.destroy();
  });
});
