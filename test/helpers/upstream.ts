/**
 * A loopback model endpoint (`node:http`) that records what the fleet does to it:
 * per model (the JSON body's `model`) the current and peak number of requests in
 * flight, and every delivery with its request id, custom id and attempt (the
 * ordinal of that request id's deliveries here). Responses are scripted per
 * custom id (status sequences, Retry-After, slow, never-answer).
 *
 * In flight is counted at the upstream, which is what the invariant is about:
 * +1 when a request's body has arrived, −1 when its response has finished or
 * its socket closed (an abort), whichever comes first.
 */
import { EventEmitter, once } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";

/** How to answer one delivery. */
export interface Step {
  /** @default 200 */
  status?: number;
  /** Response body; a 200 without one gets `{"delivery":seq,...}`. */
  body?: string;
  headers?: Record<string, string>;
  /** Wait this long before answering. @default 0 */
  delayMs?: number;
  /** Never answer (until the client gives up and closes the socket). */
  hang?: boolean;
  /** Answer only once this settles (then after `delayMs`): a gate the test opens. */
  after?: Promise<unknown>;
  /**
   * Send the headers and this many bytes of the body, then reset the
   * connection (TCP RST): a connection reset mid-body.
   */
  resetAfterBytes?: number;
  /**
   * Send the body in `dripChunks` pieces, one every `dripMs` (the headers at
   * once): a body slower than the client's timeout.
   */
  dripMs?: number;
  /** @default 10 */
  dripChunks?: number;
}

/** One request as the upstream saw it. */
export interface Delivery {
  /** 1-based order of arrival over the upstream's life. */
  seq: number;
  requestId: string;
  customId: string;
  model: string;
  /** 1 for this request id's first delivery here. */
  attempt: number;
  authorization: string | undefined;
  /** W3C trace context and the batch id, as sent. */
  traceparent: string | undefined;
  batchId: string | undefined;
  /** `Date.now()` at arrival (body read). */
  arrivedAt: number;
  /** The client's port: which process sent it (see test/faults/procfs.ts). */
  remotePort: number;
  /** `x-test-sender` as sent: which in-process dispatcher sent it (startTestDispatcher's `sender`). */
  sender: string | undefined;
  /** `Date.now()` when the response finished or the socket closed. */
  endedAt?: number;
  /** answered: the response finished; closed: the client went away first. */
  end?: "answered" | "closed";
  status?: number;
}

/** Per-model in-flight counters. */
export interface ModelGauge {
  current: number;
  peak: number;
}

/** A running upstream; see the file header. */
export class Upstream extends EventEmitter {
  readonly deliveries: Delivery[] = [];
  /** Every change of a model's in-flight count: [Date.now(), model, count after]. */
  readonly timeline: Array<[number, string, number]> = [];
  readonly #server: Server;
  readonly #gauges = new Map<string, ModelGauge>();
  readonly #scripts = new Map<string, Step[]>();
  readonly #byRequest = new Map<string, number>();
  readonly #sockets = new Set<Socket>();
  #url = "";
  /** Answer for custom ids without a script. @default 200 at once */
  respond: (d: Delivery) => Step = () => ({});
  /**
   * Count a request as arrived only on the next turn of the event loop, after the I/O
   * events already received: a client that closes request A and then sends B has its
   * FIN on A's socket queued before B's bytes, but one poll of the event loop may hand
   * them to us in either order, and 'close' is emitted in a later phase than 'data'.
   * Without this, an abort followed at once by the next request can read as one request
   * too many in flight for an instant that never existed on the wire. @default false
   */
  settleArrivals = false;

  constructor() {
    super();
    this.setMaxListeners(0);
    this.#server = createServer((req, res) => this.#handle(req, res));
    // Requests may hang for as long as a test likes.
    this.#server.requestTimeout = 0;
    this.#server.keepAliveTimeout = 60_000;
    this.#server.on("connection", (s: Socket) => {
      this.#sockets.add(s);
      s.on("close", () => this.#sockets.delete(s));
    });
  }

  /** Starts listening on 127.0.0.1 (a free port). */
  async listen(): Promise<this> {
    this.#server.listen(0, "127.0.0.1");
    await once(this.#server, "listening");
    this.#url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
    return this;
  }

  /** Base URL, e.g. http://127.0.0.1:41234 */
  get url(): string {
    return this.#url;
  }

  /** Answers successive deliveries of `customId` with `steps` in order; the last repeats. */
  script(customId: string, steps: Step[]): void {
    this.#scripts.set(customId, steps);
  }

  /** In-flight counters of `model` (zeros when never seen). */
  gauge(model: string): ModelGauge {
    return { ...(this.#gauges.get(model) ?? { current: 0, peak: 0 }) };
  }

  /** Forgets the peak of `model` (it restarts from the current count). */
  resetPeak(model: string): void {
    const g = this.#gauges.get(model);
    if (g) g.peak = g.current;
  }

  /**
   * Time-weighted mean of `model`'s in-flight count between `fromMs` and
   * `toMs` (Date.now() values; default: its first arrival to its last end).
   */
  averageInFlight(model: string, fromMs?: number, toMs?: number): number {
    const events = this.timeline.filter(([, m]) => m === model);
    if (events.length === 0) return 0;
    const from = fromMs ?? events[0]![0];
    const to = toMs ?? events[events.length - 1]![0];
    if (to <= from) return 0;
    let area = 0;
    let level = 0;
    let at = from;
    for (const [t, , n] of events) {
      if (t > from) {
        const end = Math.min(t, to);
        if (end > at) area += level * (end - at);
        at = Math.max(at, end);
      }
      if (t >= to) break;
      level = n;
    }
    if (to > at) area += level * (to - at);
    return area / (to - from);
  }

  /**
   * Time-weighted mean number of the deliveries matching `which` (e.g. one
   * batch's) in flight between `fromMs` and `toMs`: each counts from its
   * arrival to its end (or `toMs` while still open).
   */
  averageInFlightOf(which: (d: Delivery) => boolean, fromMs: number, toMs: number): number {
    if (toMs <= fromMs) return 0;
    let area = 0;
    for (const d of this.deliveries) {
      if (!which(d)) continue;
      const a = Math.max(d.arrivedAt, fromMs);
      const b = Math.min(d.endedAt ?? toMs, toMs);
      if (b > a) area += b - a;
    }
    return area / (toMs - fromMs);
  }

  /**
   * For each end of a `model` request, the wait until the next `model` request
   * arrived (ms, sorted): how long a freed slot stayed empty while work was left.
   */
  turnoverGaps(model: string): number[] {
    const ds = this.deliveries.filter((d) => d.model === model);
    const ends = ds
      .flatMap((d) => (d.endedAt === undefined ? [] : [d.endedAt]))
      .sort((a, b) => a - b);
    const arrivals = ds.map((d) => d.arrivedAt).sort((a, b) => a - b);
    const gaps: number[] = [];
    let j = 0;
    for (const e of ends) {
      while (j < arrivals.length && arrivals[j]! < e) j++;
      if (j >= arrivals.length) break;
      gaps.push(arrivals[j]! - e);
      j++;
    }
    return gaps.sort((a, b) => a - b);
  }

  /** Requests in flight, over every model. */
  get inFlight(): number {
    let n = 0;
    for (const g of this.#gauges.values()) n += g.current;
    return n;
  }

  /** Deliveries of `customId`, in order. */
  of(customId: string): Delivery[] {
    return this.deliveries.filter((d) => d.customId === customId);
  }

  /**
   * Resolves once `predicate` holds, checked now and after every arrival and
   * end; rejects after `timeoutMs` with `what` in the message.
   */
  until(predicate: () => boolean, timeoutMs = 30_000, what = "condition"): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!predicate()) return;
        cleanup();
        resolve();
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`upstream: timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off("arrive", check);
        this.off("end", check);
      };
      this.on("arrive", check);
      this.on("end", check);
    });
  }

  /** Closes the server and every connection. */
  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    this.#server.close();
    if (this.#server.listening) await once(this.#server, "close");
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", () => {});
    req.on("end", () => {
      if (this.settleArrivals) setTimeout(() => this.#arrive(req, res, chunks), 0);
      else this.#arrive(req, res, chunks);
    });
  }

  #arrive(req: IncomingMessage, res: ServerResponse, chunks: Buffer[]): void {
    const text = Buffer.concat(chunks).toString("utf8");
    let model = "";
    try {
      model = String((JSON.parse(text) as { model?: unknown }).model ?? "");
    } catch {
      // not JSON: counted under ""
    }
    const requestId = header(req, "x-fusillade-request-id");
    const attempt = (this.#byRequest.get(requestId) ?? 0) + 1;
    this.#byRequest.set(requestId, attempt);
    const d: Delivery = {
      seq: this.deliveries.length + 1,
      requestId,
      customId: header(req, "x-fusillade-custom-id"),
      model,
      attempt,
      authorization: req.headers.authorization,
      traceparent: req.headers.traceparent as string | undefined,
      batchId: req.headers["x-fusillade-batch-id"] as string | undefined,
      arrivedAt: Date.now(),
      remotePort: req.socket.remotePort ?? 0,
      sender: req.headers["x-test-sender"] as string | undefined,
    };
    this.deliveries.push(d);
    const g = this.#gauges.get(model) ?? { current: 0, peak: 0 };
    this.#gauges.set(model, g);
    g.current++;
    g.peak = Math.max(g.peak, g.current);
    this.timeline.push([d.arrivedAt, model, g.current]);
    const finish = (how: "answered" | "closed") => {
      if (d.end !== undefined) return;
      d.end = how;
      d.endedAt = Date.now();
      g.current--;
      this.timeline.push([d.endedAt, model, g.current]);
      this.emit("end", d);
    };
    res.on("finish", () => finish("answered"));
    res.on("close", () => finish("closed"));
    this.emit("arrive", d);
    // Closed while it settled: it arrived and went at once.
    if (res.destroyed || req.socket.destroyed) finish("closed");
    else this.#answer(d, res);
  }

  #answer(d: Delivery, res: ServerResponse): void {
    const steps = this.#scripts.get(d.customId);
    const step = steps ? (steps[Math.min(d.attempt, steps.length) - 1] ?? {}) : this.respond(d);
    if (step.hang) return;
    const send = () => {
      if (res.destroyed || res.writableEnded) return;
      const status = step.status ?? 200;
      d.status = status;
      const body =
        step.body ??
        JSON.stringify({ delivery: d.seq, request_id: d.requestId, custom_id: d.customId });
      // Content-Length promises the whole body (a reset or a drip is then plainly cut short).
      res.writeHead(status, {
        "content-type": "application/json",
        "content-length": String(Buffer.byteLength(body)),
        ...step.headers,
      });
      if (step.resetAfterBytes !== undefined) {
        const head = Buffer.from(body).subarray(0, step.resetAfterBytes);
        res.write(head, () => res.socket?.resetAndDestroy());
        return;
      }
      if (step.dripMs !== undefined) {
        drip(res, Buffer.from(body), step.dripMs, step.dripChunks ?? 10);
        return;
      }
      res.end(body);
    };
    const later = () => {
      if (step.delayMs) setTimeout(send, step.delayMs);
      else send();
    };
    if (step.after) void step.after.then(later, later);
    else later();
  }
}

/** Writes `body` in `chunks` pieces, `everyMs` apart; stops if the client goes away. */
function drip(res: ServerResponse, body: Buffer, everyMs: number, chunks: number): void {
  const size = Math.max(1, Math.ceil(body.length / chunks));
  let offset = 0;
  const next = () => {
    if (res.destroyed || res.writableEnded) return;
    const piece = body.subarray(offset, offset + size);
    offset += size;
    if (offset >= body.length) res.end(piece);
    else {
      res.write(piece);
      setTimeout(next, everyMs);
    }
  };
  next();
}

function header(req: IncomingMessage, name: string): string {
  const v = req.headers[name];
  return (Array.isArray(v) ? v[0] : v) ?? "";
}

/** Starts an upstream; close it when done. */
export async function startUpstream(): Promise<Upstream> {
  return new Upstream().listen();
}
