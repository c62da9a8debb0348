/**
 * The dashboard's API clients: Connect-Web over HTTP/1.1 to the page's own
 * origin, with the same generated service descriptors as the server. A token,
 * when the server asks for one, is kept in this module's memory only.
 */
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { AdminService } from "../../src/gen/fusillade/v1/admin_service_pb.js";
import { BatchService } from "../../src/gen/fusillade/v1/batch_service_pb.js";

let token: string | undefined;
const listeners = new Set<() => void>();

/** Uses `t` for every call from now on (memory only). */
export function setToken(t: string | undefined): void {
  token = t === "" ? undefined : t;
}

/** The authorization header for a plain fetch of this origin (e.g. /metrics). */
export function authHeader(): Record<string, string> {
  return token === undefined ? {} : { authorization: `Bearer ${token}` };
}

/** Called when a call is refused for want of a (valid) token. */
export function onNeedToken(fn: () => void): void {
  listeners.add(fn);
}

const auth: Interceptor = (next) => async (req) => {
  if (token !== undefined) req.header.set("authorization", `Bearer ${token}`);
  try {
    return await next(req);
  } catch (e) {
    if (ConnectError.from(e).code === Code.Unauthenticated) for (const fn of listeners) fn();
    throw e;
  }
};

const transport = createConnectTransport({
  baseUrl: window.location.origin,
  interceptors: [auth],
});

export const batches = createClient(BatchService, transport);
export const admin = createClient(AdminService, transport);

/** A short message for an error from a call. */
export function describe(e: unknown): string {
  const c = ConnectError.from(e);
  return `${Code[c.code] ?? c.code}: ${c.rawMessage}`;
}

export { Code, ConnectError };
