/**
 * A loopback upstream for benchmarks: answers every request after a fixed
 * latency and measures, per model, in-flight requests over time (the limit
 * invariant is checked where it matters: at the upstream).
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface ModelLoad {
  peak: number;
  /** Sum of in-flight × ms while the model had work in flight, for the mean. */
  inFlightMs: number;
  /** ms during which at least one request of the model was in flight. */
  busyMs: number;
  delivered: number;
}

export class BenchUpstream {
  readonly load = new Map<string, ModelLoad>();
  private readonly current = new Map<string, { n: number; since: number }>();
  private server: Server | undefined;
  url = "";

  constructor(private readonly latencyMs: number) {}

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        let model = "unknown";
        try {
          model =
            (JSON.parse(Buffer.concat(chunks).toString()) as { model?: string }).model ?? model;
        } catch {
          // not JSON: counted as "unknown"
        }
        this.change(model, +1);
        let ended = false;
        const end = () => {
          if (ended) return;
          ended = true;
          this.change(model, -1);
        };
        res.on("close", end);
        setTimeout(() => {
          res.setHeader("content-type", "application/json");
          res.end(JSON.stringify({ id: "cmpl", object: "chat.completion", model, choices: [] }));
          end();
        }, this.latencyMs);
      });
    });
    this.server.keepAliveTimeout = 60_000;
    await new Promise<void>((r) => this.server!.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  private change(model: string, delta: number): void {
    const now = performance.now();
    const c = this.current.get(model) ?? { n: 0, since: now };
    const l = this.load.get(model) ?? { peak: 0, inFlightMs: 0, busyMs: 0, delivered: 0 };
    l.inFlightMs += c.n * (now - c.since);
    if (c.n > 0) l.busyMs += now - c.since;
    c.n += delta;
    c.since = now;
    if (delta > 0) l.delivered++;
    l.peak = Math.max(l.peak, c.n);
    this.current.set(model, c);
    this.load.set(model, l);
  }

  reset(): void {
    this.load.clear();
    this.current.clear();
  }

  async close(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}
