/**
 * The port's connections, bounded in number and in time (docs/trust.md, "Timeouts and
 * connection caps"). Owns every accepted TCP connection until it closes:
 *
 * - **caps**: at most `maxConnections` open, and `maxConnectionsPerClient` from one
 *   address. A connection past a cap first evicts the longest-idle connection (of that
 *   address, for the per-client cap); only when none is idle is the newcomer refused. So a
 *   flood of idle or half-open sockets cannot keep out a dispatcher or a Health probe:
 *   they take the flood's place.
 * - **first request**: a connection that has not started a request (HTTP/1.1 headers
 *   complete, or an HTTP/2 stream) within `headersTimeoutMs` of being accepted is closed
 *   (this covers a partial HTTP/2 preface, a TLS handshake that stalls, and silence);
 * - **idle**: a connection with no request in progress for `idleTimeoutMs` is closed
 *   (HTTP/2 with a GOAWAY, so clients reconnect cleanly); one with a request in progress
 *   (a long poll, a stream) is never idle;
 * - **body progress**: a request whose body makes no progress for `bodyTimeoutMs` is cut
 *   (measured until the body has been read; a long server stream after it is not cut).
 *
 * The modes of a connection: waiting for its first request → busy (≥ 1 request) ⇄ idle,
 * until closed by its client, a timeout, an eviction, or the server's close.
 */
import type http from "node:http";
import type http2 from "node:http2";
import type net from "node:net";
import type { ConnectionLimits } from "../config/config.js";

/** Why a connection was closed by the guard (for logs and tests). */
export type CloseReason = "no-request" | "idle" | "evicted" | "refused" | "body-stalled";

interface Entry {
  readonly socket: net.Socket;
  readonly client: string;
  /** Requests in progress. */
  active: number;
  /** When it last became idle (accept time before its first request). */
  idleSince: number;
  timer: NodeJS.Timeout | undefined;
  /** Its HTTP/2 session, closed with a GOAWAY rather than a reset. */
  session: http2.Http2Session | undefined;
}

const ENTRY = Symbol("fusillade.connection");
/** How long a graceful HTTP/2 close may take before the socket is destroyed. */
const GOAWAY_GRACE_MS = 1_000;

type Tagged = { [ENTRY]?: Entry; _parent?: Tagged };

export class ConnectionGuard {
  readonly #limits: Readonly<ConnectionLimits>;
  readonly #onClose: (reason: CloseReason, client: string) => void;
  readonly #entries = new Map<net.Socket, Entry>();
  readonly #perClient = new Map<string, number>();

  constructor(
    limits: Readonly<ConnectionLimits>,
    onClose: (reason: CloseReason, client: string) => void = () => undefined,
  ) {
    this.#limits = limits;
    this.#onClose = onClose;
  }

  /** Open connections now. */
  get size(): number {
    return this.#entries.size;
  }

  /** Takes a newly accepted socket in, or refuses it (destroyed); false when refused. */
  accept(socket: net.Socket): boolean {
    const client = socket.remoteAddress ?? "unknown";
    const fromClient = this.#perClient.get(client) ?? 0;
    if (fromClient >= this.#limits.maxConnectionsPerClient && !this.#evictIdle(client)) {
      return this.#refuse(socket, client);
    }
    if (this.#entries.size >= this.#limits.maxConnections && !this.#evictIdle(undefined)) {
      return this.#refuse(socket, client);
    }
    const entry: Entry = {
      socket,
      client,
      active: 0,
      idleSince: Date.now(),
      timer: undefined,
      session: undefined,
    };
    (socket as Tagged)[ENTRY] = entry;
    this.#entries.set(socket, entry);
    this.#perClient.set(client, (this.#perClient.get(client) ?? 0) + 1);
    this.#arm(entry, this.#limits.headersTimeoutMs, "no-request");
    socket.once("close", () => this.#forget(entry));
    return true;
  }

  /** A TLS socket made over an accepted one: requests on it count for the accepted one. */
  adoptTls(tlsSocket: net.Socket): void {
    const t = tlsSocket as Tagged;
    t[ENTRY] ??= t._parent?.[ENTRY];
  }

  /** An HTTP/2 session on an accepted socket: idle closes send it a GOAWAY. */
  adoptSession(session: http2.Http2Session): void {
    const entry = (session.socket as Tagged | undefined)?.[ENTRY];
    if (entry !== undefined) entry.session = session;
  }

  /**
   * A request began on its connection: busy until the response closes; its body must make
   * progress every `bodyTimeoutMs` until it has been read.
   */
  track(req: http.IncomingMessage | http2.Http2ServerRequest, res: NodeJS.EventEmitter): void {
    const entry = (req.socket as Tagged | undefined)?.[ENTRY];
    if (entry !== undefined) {
      entry.active++;
      this.#disarm(entry);
      res.once("close", () => {
        entry.active--;
        if (entry.active === 0 && this.#entries.has(entry.socket)) {
          entry.idleSince = Date.now();
          this.#arm(entry, this.#limits.idleTimeoutMs, "idle");
        }
      });
    }
    if (this.#limits.bodyTimeoutMs > 0 && !req.complete) {
      req.setTimeout(this.#limits.bodyTimeoutMs, () => {
        this.#onClose("body-stalled", entry?.client ?? "unknown");
        req.destroy();
      });
      // Read: a server stream that follows may be quiet for as long as it likes.
      req.once("end", () => req.setTimeout(0));
    }
  }

  /** The longest-idle connection (of `client`, when given), closed; false if none is idle. */
  #evictIdle(client: string | undefined): boolean {
    let oldest: Entry | undefined;
    for (const e of this.#entries.values()) {
      if (e.active > 0 || (client !== undefined && e.client !== client)) continue;
      if (oldest === undefined || e.idleSince < oldest.idleSince) oldest = e;
    }
    if (oldest === undefined) return false;
    this.#onClose("evicted", oldest.client);
    // Gone from the counts now, so the newcomer's place is free before the close event.
    this.#forget(oldest);
    oldest.socket.destroy();
    return true;
  }

  #refuse(socket: net.Socket, client: string): false {
    this.#onClose("refused", client);
    socket.destroy();
    return false;
  }

  #arm(entry: Entry, ms: number, reason: CloseReason): void {
    this.#disarm(entry);
    if (ms <= 0) return;
    entry.timer = setTimeout(() => this.#close(entry, reason), ms);
    entry.timer.unref();
  }

  #disarm(entry: Entry): void {
    if (entry.timer !== undefined) clearTimeout(entry.timer);
    entry.timer = undefined;
  }

  #close(entry: Entry, reason: CloseReason): void {
    if (entry.active > 0 || !this.#entries.has(entry.socket)) return;
    this.#onClose(reason, entry.client);
    const session = entry.session;
    if (session !== undefined && !session.closed && !session.destroyed) {
      session.close();
      setTimeout(() => entry.socket.destroy(), GOAWAY_GRACE_MS).unref();
    } else {
      entry.socket.destroy();
    }
  }

  #forget(entry: Entry): void {
    if (!this.#entries.delete(entry.socket)) return;
    this.#disarm(entry);
    const n = (this.#perClient.get(entry.client) ?? 1) - 1;
    if (n <= 0) this.#perClient.delete(entry.client);
    else this.#perClient.set(entry.client, n);
  }
}
