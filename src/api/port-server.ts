/**
 * A Connect service served over a MessagePort (the messages: src/dispatch-port.ts):
 * `serve`'s dispatcher thread reaches DispatchService here instead of over
 * HTTP/2 on loopback. A call runs as Connect's own handlers run it — a
 * handler context with the call's headers, deadline, cancellation and the
 * server's shutdown signal, then the server's interceptors (domain errors
 * mapped to codes and logged, the caller authenticated), then the same
 * implementation — without the protocol: no socket, no HTTP/2 framing, no
 * protobuf encoding (docs/architecture.md, "serve's two threads").
 *
 * Not carried: error details and response headers (the dispatcher reads
 * codes only), and the message size limit (nothing is framed).
 */
import type { MessagePort } from "node:worker_threads";
import type { DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createHandlerContext,
  createServiceImplSpec,
  type Interceptor,
  type ServiceImpl,
} from "@connectrpc/connect";
import { createMethodUrl, invokeUnaryImplementation } from "@connectrpc/connect/protocol";
import { PORT_BASE_URL, type PortAnswer, type PortRequest } from "../dispatch-port.js";

/** How long close() lets calls in flight finish, as the HTTP server's close does. */
const CLOSE_GRACE_MS = 2000;

export interface PortServerOptions {
  /** The server's interceptors, in the server's order (./server.ts, apiInterceptors). */
  interceptors: Interceptor[];
  /** Aborted when the control plane stops: long polls end, as on the wire. */
  shutdownSignal: AbortSignal;
}

export interface PortServer {
  /**
   * Refuses new calls (UNAVAILABLE), tells the ones in flight to end (their
   * shutdown signal), gives them CLOSE_GRACE_MS, then closes the port: the
   * caller's calls still waiting fail as a lost connection's do.
   */
  close(): Promise<void>;
}

type Call = Extract<PortRequest, { kind: "call" }>;

/** Serves the unary methods of `service` (`impl`) to whoever holds the other end of `port`. */
export function servePort<S extends DescService>(
  port: MessagePort,
  service: S,
  impl: ServiceImpl<S>,
  opts: PortServerOptions,
): PortServer {
  const spec = createServiceImplSpec(service, impl);
  const closing = new AbortController();
  const shutdownSignal = AbortSignal.any([opts.shutdownSignal, closing.signal]);
  const inFlight = new Map<number, { cancel: AbortController; done: Promise<void> }>();
  const fail = (id: number, e: ConnectError) =>
    port.postMessage({ id, ok: false, code: e.code, message: e.rawMessage } satisfies PortAnswer);

  async function run(call: Call, requestSignal: AbortSignal): Promise<void> {
    const method = Object.hasOwn(spec.methods, call.method) ? spec.methods[call.method] : undefined;
    if (method?.kind !== "unary") {
      fail(call.id, new ConnectError(`no unary method ${call.method}`, Code.Unimplemented));
      return;
    }
    const context = createHandlerContext({
      service,
      method: method.method,
      protocolName: "in-process",
      requestMethod: "POST",
      // Its host is no loopback name: a call without a token is refused, even in local mode.
      url: createMethodUrl(PORT_BASE_URL, method.method),
      timeoutMs: call.timeoutMs,
      shutdownSignal,
      requestSignal,
      requestHeader: call.header,
    });
    try {
      const message = await invokeUnaryImplementation(
        method,
        context,
        call.message as Parameters<typeof method.impl>[0],
        opts.interceptors,
      );
      port.postMessage({ id: call.id, ok: true, message } satisfies PortAnswer);
    } catch (e) {
      // As Connect's handlers answer: a ConnectError as it is, anything else INTERNAL.
      context.abort(e);
      fail(
        call.id,
        e instanceof ConnectError
          ? e
          : new ConnectError("internal error", Code.Internal, undefined, undefined, e),
      );
    } finally {
      context.abort();
    }
  }

  port.on("message", (m: PortRequest) => {
    if (m.kind === "cancel") {
      inFlight.get(m.id)?.cancel.abort(new ConnectError("the caller cancelled", Code.Canceled));
      return;
    }
    if (closing.signal.aborted) {
      fail(m.id, new ConnectError("the control plane is stopping", Code.Unavailable));
      return;
    }
    const cancel = new AbortController();
    const done = run(m, cancel.signal).finally(() => inFlight.delete(m.id));
    inFlight.set(m.id, { cancel, done });
  });
  // The other end is gone (the thread ended): as a dropped connection, its calls are cancelled.
  port.on("close", () => {
    for (const c of inFlight.values()) {
      c.cancel.abort(new ConnectError("the caller went away", Code.Canceled));
    }
  });

  return {
    async close() {
      closing.abort();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.allSettled([...inFlight.values()].map((c) => c.done)),
        new Promise((r) => {
          timer = setTimeout(r, CLOSE_GRACE_MS);
        }),
      ]);
      clearTimeout(timer);
      port.close();
    },
  };
}
