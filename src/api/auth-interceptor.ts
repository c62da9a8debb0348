/**
 * Every call is authenticated before its handler runs (docs/trust.md): the
 * principal goes into the call's context values (PRINCIPAL), a role outside
 * its services is PERMISSION_DENIED.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { AuthError, type Authenticator } from "../auth/authenticator.js";
import { mayCall, OPEN_SERVICES, PRINCIPAL } from "../auth/principal.js";

/** The Host a call was addressed to (HTTP/1.1 Host, HTTP/2 :authority). */
export function hostOf(header: Headers, url: string): string | null {
  const h = header.get("host");
  if (h !== null) return h;
  try {
    return new URL(url).host;
  } catch {
    return null;
  }
}

export function authInterceptor(auth: Authenticator): Interceptor {
  return (next) => async (req) => {
    const service = req.service.typeName;
    if (OPEN_SERVICES.has(service)) return next(req);
    let principal: Awaited<ReturnType<Authenticator["authenticate"]>>;
    try {
      principal = await auth.authenticate(
        req.header.get("authorization"),
        hostOf(req.header, req.url),
      );
    } catch (e) {
      if (e instanceof AuthError) {
        throw new ConnectError(
          e.message,
          e.kind === "unauthenticated" ? Code.Unauthenticated : Code.PermissionDenied,
        );
      }
      throw e;
    }
    if (!mayCall(principal.role, service)) {
      throw new ConnectError(
        `a ${principal.role} token may not call ${service}`,
        Code.PermissionDenied,
      );
    }
    req.contextValues.set(PRINCIPAL, principal);
    return next(req);
  };
}
