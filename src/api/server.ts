/**
 * The control plane's one port: Connect, gRPC and gRPC-Web over HTTP/1.1
 * and h2c. A connection is routed by its first bytes: the HTTP/2 preface
 * ("PRI * HTTP/2.0") goes to the http2 server, anything else to http.
 * With a certificate, the port speaks TLS instead: h2 and HTTP/1.1 chosen
 * by ALPN (one http2 secure server with allowHTTP1).
 */
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Authenticator } from "../auth/authenticator.js";
import { CONNECTION_DEFAULTS, type ConnectionLimits } from "../config/config.js";
import type { PlainRoute } from "../plain-route.js";
import { authInterceptor } from "./auth-interceptor.js";
import { type CloseReason, ConnectionGuard } from "./connection-guard.js";
import { errorInterceptor } from "./errors-interceptor.js";

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export interface ServerOptions {
  routes: (router: ConnectRouter) => void;
  /** Aborted when the server closes: handlers end long polls and streams. */
  shutdownSignal: AbortSignal;
  maxMessageBytes: number;
  logError: (e: unknown) => void;
  /** Authenticates every call (docs/trust.md). */
  auth: Authenticator;
  /** PEM certificate chain and key: serve TLS. */
  tls?: { cert: string; key: string };
  /**
   * Plain HTTP routes tried before Connect (/metrics, the dashboard): true
   * when the request was answered.
   */
  plainRoutes?: readonly PlainRoute[];
  /** Connection caps and timeouts (docs/trust.md). @default CONNECTION_DEFAULTS */
  connections?: Readonly<ConnectionLimits>;
  /** A connection the guard closed or refused. @default ignored */
  onConnectionClosed?: (reason: CloseReason, client: string) => void;
}

export interface RunningServer {
  /** Base URL, e.g. http://127.0.0.1:8080 */
  url: string;
  port: number;
  close(): Promise<void>;
}

/**
 * What every call goes through before its handler, outermost first: domain errors mapped
 * to codes (and logged), then authentication. The in-process port (./port-server.ts) runs
 * the same list.
 */
export function apiInterceptors(
  auth: Authenticator,
  logError: (e: unknown) => void,
): Interceptor[] {
  return [errorInterceptor(logError), authInterceptor(auth)];
}

/** Builds the server; `listen` starts it. */
export function buildServer(opts: ServerOptions) {
  const connect = connectNodeAdapter({
    routes: opts.routes,
    interceptors: apiInterceptors(opts.auth, opts.logError),
    shutdownSignal: opts.shutdownSignal,
    readMaxBytes: opts.maxMessageBytes,
    jsonOptions: { alwaysEmitImplicit: true },
  });
  const limits = opts.connections ?? CONNECTION_DEFAULTS;
  const guard = new ConnectionGuard(limits, opts.onConnectionClosed);
  const handler = guardedHandler(connect, opts.plainRoutes ?? [], guard, opts.logError);
  if (opts.tls !== undefined) return buildTlsServer(handler, opts.tls, guard, limits);
  const h1 = http.createServer(handler);
  // Long streams and long polls: no request timeout; the guard bounds the rest.
  h1.requestTimeout = 0;
  h1.headersTimeout = limits.headersTimeoutMs;
  h1.keepAliveTimeout = limits.idleTimeoutMs;
  // h1 never listens (the front server hands it sockets), and Node starts an
  // http.Server's connection tracking on "listening": without it
  // closeIdleConnections() is a no-op (close waited the full 2 s deadline for
  // every keep-alive client) and headersTimeout is never checked.
  h1.emit("listening");
  const h2 = http2.createServer({}, handler);
  h2.on("session", (s: http2.ServerHttp2Session) => guard.adoptSession(s));
  const sessions = sessionsOf(h2);
  const sockets = new Set<net.Socket>();

  const front = net.createServer((socket) => {
    // Errors (resets) on a socket refused or closed by the guard are expected.
    socket.on("error", () => socket.destroy());
    if (!guard.accept(socket)) return;
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    // Read in paused mode and unshift: the http2 session reads from the
    // socket's buffer only when the socket was never put in flowing mode.
    let seen = Buffer.alloc(0);
    const onReadable = () => {
      let chunk: Buffer | null = socket.read() as Buffer | null;
      while (chunk !== null) {
        seen = Buffer.concat([seen, chunk]);
        chunk = socket.read() as Buffer | null;
      }
      const n = Math.min(seen.length, H2_PREFACE.length);
      const isH2 = seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
      if (isH2 && seen.length < H2_PREFACE.length) return; // need more bytes to decide
      socket.off("readable", onReadable);
      socket.unshift(seen);
      (isH2 ? h2 : h1).emit("connection", socket);
    };
    socket.on("readable", onReadable);
  });

  return {
    listen: (host: string, port: number) =>
      listenOn(
        front,
        "http",
        host,
        port,
        () => {
          // Closes idle keep-alive connections and stops the timeout checks; h1 has
          // no listening handle of its own, so its "not running" close error is moot.
          h1.close(() => undefined);
        },
        sessions,
        sockets,
      ),
  };
}

type Handler = ReturnType<typeof connectNodeAdapter>;

/**
 * Every request's way in: tracked by the guard, tried against the plain routes, then
 * Connect. Nothing a request carries can throw out of here: a request without an
 * authority (HTTP/1.0 without Host, HTTP/2 without :authority), which Connect's adapter
 * throws on outside any promise, gets a 400; anything else unexpected a 500 and a log line.
 */
function guardedHandler(
  connect: Handler,
  plainRoutes: readonly PlainRoute[],
  guard: ConnectionGuard,
  logError: (e: unknown) => void,
): Handler {
  return (req, res) => {
    try {
      guard.track(req, res);
      const authority = "authority" in req ? req.authority : req.headers.host;
      if (authority === undefined || authority === "") {
        answer(res, 400, "the request names no host (a Host header or :authority is required)");
        return;
      }
      for (const route of plainRoutes) if (route(req, res)) return;
      connect(req, res);
    } catch (e) {
      logError(e);
      answer(res, 500, "internal error");
    }
  };
}

/** A plain-text answer, unless one was started already (then the stream is cut). */
function answer(res: Parameters<Handler>[1], status: number, text: string): void {
  try {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.writeHead(status, { "content-type": "text/plain; charset=utf-8", connection: "close" });
    res.end(`${text}\n`);
  } catch {
    res.destroy();
  }
}

/**
 * Listens with `server` and returns its URL and a close that ends idle h2
 * sessions (http2Server.close() waits forever on them), runs `beforeClose`,
 * and cuts whatever is still open after 2 s (in-flight calls were already
 * told by shutdownSignal).
 */
function listenOn(
  server: net.Server,
  scheme: "http" | "https",
  host: string,
  port: number,
  beforeClose: () => void,
  sessions = sessionsOf(server),
  sockets = socketsOf(server, scheme === "https" ? "secureConnection" : "connection"),
): Promise<RunningServer> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      const addr = server.address() as net.AddressInfo;
      const hostPart = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
      resolve({
        url: `${scheme}://${hostPart}:${addr.port}`,
        port: addr.port,
        close: async () => {
          const closed = new Promise<void>((r) => server.close(() => r()));
          for (const s of sessions) s.close();
          beforeClose();
          const deadline = setTimeout(() => {
            for (const s of sessions) s.destroy();
            for (const sock of sockets) sock.destroy();
          }, 2000);
          await closed;
          clearTimeout(deadline);
        },
      });
    });
  });
}

/** The live h2 sessions of `server` (none for a plain net.Server). */
function sessionsOf(server: net.Server): Set<http2.ServerHttp2Session> {
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s: http2.ServerHttp2Session) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  return sessions;
}

/** The open sockets of `server`, as `event` hands them over. */
function socketsOf(server: net.Server, event: string): Set<net.Socket> {
  const sockets = new Set<net.Socket>();
  server.on(event, (socket: net.Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  return sockets;
}

/** TLS on the port: h2 or HTTP/1.1 by ALPN. */
function buildTlsServer(
  handler: Handler,
  tls: { cert: string; key: string },
  guard: ConnectionGuard,
  limits: Readonly<ConnectionLimits>,
) {
  const server = http2.createSecureServer(
    { ...tls, allowHTTP1: true, handshakeTimeout: limits.headersTimeoutMs },
    handler,
  );
  // Before any listener of Node's own: a refused socket is destroyed before its handshake.
  server.prependListener("connection", (socket: net.Socket) => {
    socket.on("error", () => socket.destroy());
    guard.accept(socket);
  });
  server.on("secureConnection", (t: net.Socket) => guard.adoptTls(t));
  server.on("session", (s: http2.ServerHttp2Session) => guard.adoptSession(s));
  // A client that fails the handshake (plain HTTP, a wrong CA) is not our error.
  server.on("tlsClientError", () => undefined);
  return {
    listen: (host: string, port: number) => listenOn(server, "https", host, port, () => undefined),
  };
}
