/**
 * What `serve`'s dispatcher thread and its control plane say to each other
 * over a MessagePort instead of HTTP/2 (docs/architecture.md, "serve's two
 * threads"): unary calls of a Connect service whose messages cross by
 * structured clone (protobuf-es messages are plain objects: bigint,
 * Uint8Array and nested messages survive it), with their headers, deadline
 * and cancellation. The client side is src/dispatcher/port-transport.ts,
 * the server side src/api/port-server.ts.
 */

/**
 * The address calls over the port are made to. Its host is no loopback name, so the
 * control plane lets in only calls that carry a token (the dispatcher credential it
 * made for its own thread), even in local mode.
 */
export const PORT_BASE_URL = "http://in-process";

/** From the dispatcher's thread: a call, or the cancellation of one (its signal aborted). */
export type PortRequest =
  | {
      kind: "call";
      id: number;
      /** The method's local name in the service (`sync`, `reportResults`). */
      method: string;
      header: Array<[string, string]>;
      /** What the wire sends as `connect-timeout-ms`; undefined: no deadline. */
      timeoutMs: number | undefined;
      /** The request message, as `create()` made it. */
      message: unknown;
    }
  | { kind: "cancel"; id: number };

/** From the control plane: the answer to call `id`, a message or a status. */
export type PortAnswer =
  | { id: number; ok: true; message: unknown }
  | { id: number; ok: false; code: number; message: string };
