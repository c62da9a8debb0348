/**
 * A loopback upstream for benchmarks: answers every request after a fixed
 * latency and measures, per model (read from the JSON body), what the limit
 * invariants are about, where they matter — at the upstream: peak in-flight,
 * the time-weighted mean in-flight while busy, the first arrival since the
 * last reset, and the gaps between a response sent and the next arrival of
 * that model when nothing of it was in flight (the turnaround a limit-1 model
 * sees).
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";

export interface ModelLoad {
  peak: number;
  /** ∫ in-flight dt over the time at least one request was in flight (ms × requests). */
  inFlightMs: number;
  /** ms during which at least one request of the model was in flight. */
  busyMs: number;
  delivered: number;
  /** performance.now() of the first arrival since reset(). */
  firstAt: number;
  /** Response sent → next arrival, ms, for arrivals that found nothing of the model in flight. */
  gaps: number[];
}

interface Current {
  n: number;
  /** When n last changed. */
  since: number;
  /** When the last response of the model was sent (n dropped); undefined before any. */
  lastEnd: number | undefined;
}

/** Time-weighted mean in-flight while busy. */
export function meanWhileBusy(l: ModelLoad): number {
  return l.busyMs > 0 ? l.inFlightMs / l.busyMs : 0;
}

export class BenchUpstream {
  readonly load = new Map<string, ModelLoad>();
  private readonly current = new Map<string, Current>();
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
    this.server.headersTimeout = 0;
    this.server.requestTimeout = 0;
    await new Promise<void>((r) => this.server!.listen(0, "127.0.0.1", 4096, r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Integrates in-flight × time up to now, then applies `delta`. */
  private change(model: string, delta: number): void {
    const now = performance.now();
    let c = this.current.get(model);
    if (!c) {
      c = { n: 0, since: now, lastEnd: undefined };
      this.current.set(model, c);
    }
    let l = this.load.get(model);
    if (!l) {
      l = { peak: 0, inFlightMs: 0, busyMs: 0, delivered: 0, firstAt: now, gaps: [] };
      this.load.set(model, l);
    }
    l.inFlightMs += c.n * (now - c.since);
    if (c.n > 0) l.busyMs += now - c.since;
    if (delta > 0) {
      if (c.n === 0 && c.lastEnd !== undefined) l.gaps.push(now - c.lastEnd);
      l.delivered++;
    } else {
      c.lastEnd = now;
    }
    c.n += delta;
    c.since = now;
    l.peak = Math.max(l.peak, c.n);
  }

  /** Forgets every figure (in-flight requests keep being counted from now). */
  reset(): void {
    this.load.clear();
    const now = performance.now();
    for (const c of this.current.values()) {
      c.since = now;
      c.lastEnd = undefined;
    }
  }

  /** The figures of `model` since the last reset (zeros when it saw nothing). */
  of(model: string): ModelLoad {
    return (
      this.load.get(model) ?? {
        peak: 0,
        inFlightMs: 0,
        busyMs: 0,
        delivered: 0,
        firstAt: Number.NaN,
        gaps: [],
      }
    );
  }

  async close(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}
