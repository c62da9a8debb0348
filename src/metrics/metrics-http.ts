/**
 * Serving /metrics: on the API port (plain HTTP before Connect routing; an
 * admin's credential, which local mode gives any loopback caller), or on a
 * separate `--metrics-listen` address, open (docs/observability.md).
 * Several registries (the control plane's, the dispatcher thread's) are
 * concatenated: their metric names never overlap.
 */
import http from "node:http";
import type net from "node:net";
import { Registry } from "prom-client";
import { AuthError, type Authenticator } from "../auth/authenticator.js";
import type { PlainRequest, PlainResponse, PlainRoute } from "../plain-route.js";

/** Text of one registry (or "" when it has nothing to say now). */
export type MetricsSource = () => Promise<string>;

export const METRICS_CONTENT_TYPE = Registry.PROMETHEUS_CONTENT_TYPE;

/** Every source's text, one after the other. */
export async function metricsText(sources: readonly MetricsSource[]): Promise<string> {
  const parts = await Promise.all(sources.map((s) => s().catch(() => "")));
  return parts
    .filter((p) => p !== "")
    .map((p) => (p.endsWith("\n") ? p : `${p}\n`))
    .join("");
}

function header(req: PlainRequest, name: string): string | null {
  const v = req.headers[name];
  return typeof v === "string" ? v : null;
}

/**
 * Answers GET /metrics on the API port when the caller may read it (an
 * admin, or local mode from a loopback Host); false for any other path.
 */
export function apiMetricsRoute(
  sources: readonly MetricsSource[],
  auth: Authenticator,
): PlainRoute {
  return (req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (path !== "/metrics") return false;
    void (async () => {
      try {
        if (req.method !== "GET" && req.method !== "HEAD") {
          plain(res, 405, "GET /metrics\n");
          return;
        }
        const host = header(req, "host") ?? header(req, ":authority");
        const p = await auth.authenticate(header(req, "authorization"), host);
        if (p.role !== "admin") {
          plain(res, 403, "/metrics needs an admin token (or --metrics-listen)\n");
          return;
        }
        const text = await metricsText(sources);
        res.writeHead(200, { "content-type": METRICS_CONTENT_TYPE });
        res.end(req.method === "HEAD" ? undefined : text);
      } catch (e) {
        if (e instanceof AuthError) {
          plain(res, e.kind === "unauthenticated" ? 401 : 403, `${e.message}\n`);
        } else {
          plain(res, 500, "metrics failed\n");
        }
      }
    })();
    return true;
  };
}

function plain(res: PlainResponse, status: number, body: string): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8" });
  res.end(body);
}

export interface MetricsServer {
  url: string;
  close(): Promise<void>;
}

/** Serves GET /metrics (open) on `host:port` until closed. */
export function startMetricsServer(
  host: string,
  port: number,
  sources: readonly MetricsSource[],
): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    if ((req.url ?? "").split("?")[0] !== "/metrics") {
      plain(res, 404, "only /metrics here\n");
      return;
    }
    metricsText(sources).then(
      (text) => {
        res.writeHead(200, { "content-type": METRICS_CONTENT_TYPE });
        res.end(text);
      },
      () => plain(res, 500, "metrics failed\n"),
    );
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      const addr = server.address() as net.AddressInfo;
      const h = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
      resolve({
        url: `http://${h}:${addr.port}/metrics`,
        close: () =>
          new Promise<void>((r) => {
            server.closeAllConnections();
            server.close(() => r());
          }),
      });
    });
  });
}
