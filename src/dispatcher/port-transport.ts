/**
 * A Connect transport over a MessagePort (the messages: src/dispatch-port.ts):
 * `serve`'s dispatcher thread calls its own control plane's DispatchService
 * through it (the other side: src/api/port-server.ts), not over HTTP/2 on
 * loopback. A call runs through Connect's `runUnaryCall`, as on every
 * transport: the client's interceptors (the bearer token), the deadline and
 * the caller's signal (a cancellation is sent across, as a stream reset
 * would be); its messages cross by structured clone.
 */
import type { MessagePort } from "node:worker_threads";
import type {
  DescMessage,
  DescMethodUnary,
  MessageInitShape,
  MessageShape,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  createContextValues,
  type Interceptor,
  type Transport,
  type UnaryRequest,
} from "@connectrpc/connect";
import { createMethodUrl, getAbortSignalReason, runUnaryCall } from "@connectrpc/connect/protocol";
import { PORT_BASE_URL, type PortAnswer, type PortRequest } from "../dispatch-port.js";
import { bearer, type LeaseClient, leaseClient } from "./lease-client.js";

/** A transport that owns its port: `close()` closes it. */
export interface PortTransport extends Transport {
  close(): void;
}

interface Waiter {
  resolve(message: unknown): void;
  reject(e: unknown): void;
}

/** Unary calls over `port`, through `interceptors`. */
export function createPortTransport(port: MessagePort, interceptors: Interceptor[]): PortTransport {
  let nextId = 0;
  const waiting = new Map<number, Waiter>();
  /** Set once the port is closed (either end): every call fails as on a lost connection. */
  let gone: ConnectError | undefined;
  port.on("message", (a: PortAnswer) => {
    const w = waiting.get(a.id);
    waiting.delete(a.id);
    if (a.ok) w?.resolve(a.message);
    else w?.reject(new ConnectError(a.message, a.code));
  });
  port.on("close", () => {
    // With a cause, as the errors Connect makes of a failed socket: not the server's answer.
    const cause = new Error("port closed");
    gone = new ConnectError(
      "the control plane's port is closed",
      Code.Unavailable,
      undefined,
      undefined,
      cause,
    );
    for (const w of waiting.values()) w.reject(gone);
    waiting.clear();
  });

  function call(method: string, req: UnaryRequest, timeoutMs: number | undefined) {
    if (gone !== undefined) return Promise.reject(gone);
    const id = nextId++;
    const signal = req.signal;
    return new Promise<unknown>((resolve, reject) => {
      const onAbort = () => {
        waiting.delete(id);
        port.postMessage({ kind: "cancel", id } satisfies PortRequest);
        reject(getAbortSignalReason(signal));
      };
      waiting.set(id, {
        resolve(m) {
          signal.removeEventListener("abort", onAbort);
          resolve(m);
        },
        reject(e) {
          signal.removeEventListener("abort", onAbort);
          reject(e);
        },
      });
      signal.addEventListener("abort", onAbort, { once: true });
      port.postMessage({
        kind: "call",
        id,
        method,
        header: [...req.header],
        timeoutMs,
        message: req.message,
      } satisfies PortRequest);
    });
  }

  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0],
      input: MessageInitShape<I>,
      contextValues?: ContextValues,
    ) {
      // As Connect's own transports: no timeout, or one of 0 or less, is no deadline.
      const deadline = timeoutMs === undefined || timeoutMs <= 0 ? undefined : timeoutMs;
      return runUnaryCall<I, O>({
        interceptors,
        signal,
        timeoutMs: deadline,
        req: {
          stream: false,
          service: method.parent,
          method,
          requestMethod: "POST",
          url: createMethodUrl(PORT_BASE_URL, method),
          header: new Headers(header),
          contextValues: contextValues ?? createContextValues(),
          message: input,
        },
        next: async (req) => ({
          stream: false,
          service: method.parent,
          method,
          header: new Headers(),
          trailer: new Headers(),
          message: (await call(method.localName, req, deadline)) as MessageShape<O>,
        }),
      });
    },
    stream() {
      return Promise.reject(
        new ConnectError("streaming calls are not carried over the port", Code.Unimplemented),
      );
    },
    close() {
      port.close();
    },
  };
}

/** DispatchService over `port` (serve's dispatcher thread), sending `token` on every call. */
export function portLeaseClient(
  port: MessagePort,
  dispatcherId: string,
  token: string | undefined,
): LeaseClient {
  const transport = createPortTransport(port, token === undefined ? [] : [bearer(token)]);
  return leaseClient(transport, dispatcherId, () => transport.close());
}
