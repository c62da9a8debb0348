/**
 * The client side of the CLI: Connect clients over HTTP/2 (h2c for
 * http:// URLs) to a control plane, and the mapping of RPC errors to the
 * one-line messages the CLI prints (`fusillade: <message>`, exit 1).
 */
import {
  type Client,
  Code,
  ConnectError,
  createClient,
  type Interceptor,
} from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { wantsCompression } from "../../domain/loopback.js";
import { AdminService } from "../../gen/fusillade/v1/admin_service_pb.js";
import { BatchService } from "../../gen/fusillade/v1/batch_service_pb.js";

/** The address of a local `fusillade serve`. */
export const DEFAULT_SERVER = "http://127.0.0.1:8080";

/** An error whose message is what the user should read; main.ts prints it and exits 1. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "CliError";
  }
}

export interface Connection {
  server: string;
  batch: Client<typeof BatchService>;
  admin: Client<typeof AdminService>;
  /** Closes the HTTP/2 session so the process can exit. */
  close(): void;
}

/** Validates a --server value: an http(s) URL without a path. */
export function serverUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value.includes("://") ? value : `http://${value}`);
  } catch {
    throw new CliError(
      `--server must be a URL such as ${DEFAULT_SERVER}, got ${JSON.stringify(value)}`,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new CliError(`--server must be an http:// or https:// URL, got ${JSON.stringify(value)}`);
  }
  return url.origin;
}

/** Opens clients to `server` (one HTTP/2 connection, made on first use), sending `token` when given. */
export function connect(server: string, token?: string, ca?: string): Connection {
  const baseUrl = serverUrl(server);
  const sessionManager = new Http2SessionManager(
    baseUrl,
    undefined,
    ca === undefined ? {} : { ca },
  );
  const bearer: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const transport = createConnectTransport({
    baseUrl,
    httpVersion: "2",
    sessionManager,
    interceptors: token === undefined || token === "" ? [] : [bearer],
    ...(wantsCompression(baseUrl) ? {} : { acceptCompression: [] }),
  });
  return {
    server: baseUrl,
    batch: createClient(BatchService, transport),
    admin: createClient(AdminService, transport),
    close: () => sessionManager.abort(),
  };
}

/** Socket errors that mean "nothing is listening there". */
const UNREACHABLE = /ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ECONNRESET|ETIMEDOUT|EAI_AGAIN/;

/** An RPC error as a message for people; other errors pass through. */
export function describeRpcError(e: unknown, server: string): unknown {
  if (!(e instanceof ConnectError)) return e;
  if (e.code === Code.Unavailable && UNREACHABLE.test(`${e.rawMessage} ${String(e.cause)}`)) {
    return new CliError(
      `cannot reach the server at ${server} (${e.rawMessage}); is it running? Start one with \`fusillade serve\`, or pass --server / FUSILLADE_SERVER`,
      1,
      { cause: e },
    );
  }
  const causeCode = (e.cause as NodeJS.ErrnoException | undefined)?.code ?? "";
  if (causeCode.startsWith("ERR_HTTP2") || /^protocol error$/i.test(e.rawMessage)) {
    return notFusillade(server, e, `it does not answer Connect/gRPC over HTTP/2: ${e.rawMessage}`);
  }
  if (e.code === Code.Unauthenticated) {
    const hint = /FUSILLADE_TOKEN/.test(e.rawMessage)
      ? ""
      : "; pass a token with --token or FUSILLADE_TOKEN (docs/trust.md)";
    return new CliError(`the server at ${server} refused the call: ${e.rawMessage}${hint}`, 1, {
      cause: e,
    });
  }
  if (e.code === Code.PermissionDenied) {
    return new CliError(`the server at ${server} does not allow this: ${e.rawMessage}`, 1, {
      cause: e,
    });
  }
  if (e.code === Code.Unimplemented) {
    return new CliError(`the server at ${server} does not support this yet (${e.rawMessage})`, 1, {
      cause: e,
    });
  }
  return new CliError(e.rawMessage, 1, { cause: e });
}

/** The error for a --server that is some other HTTP server. */
export function notFusillade(server: string, cause: unknown, why: string): CliError {
  return new CliError(
    `the server at ${server} is not a Fusillade control plane (${why}); check --server or FUSILLADE_SERVER (default ${DEFAULT_SERVER})`,
    1,
    { cause },
  );
}

/**
 * Turns an RPC error into the message to print, asking the server once more
 * when the call was unknown to it: a Fusillade control plane of any version
 * answers ListFiles, so one that does not is some other server.
 */
export async function explainRpcError(e: unknown, conn: Connection): Promise<unknown> {
  if (e instanceof ConnectError && e.code === Code.Unimplemented) {
    const known = await conn.batch.listFiles({ pageSize: 1 }).then(
      () => true,
      (again: unknown) => !(again instanceof ConnectError && again.code === Code.Unimplemented),
    );
    if (!known)
      return notFusillade(conn.server, e, `it answers ${e.rawMessage} to Fusillade's calls`);
  }
  return describeRpcError(e, conn.server);
}

/** Whether an RPC error is worth retrying (server restarting, connection lost). */
export function isTransient(e: unknown): boolean {
  return e instanceof ConnectError && (e.code === Code.Unavailable || e.code === Code.Aborted);
}
