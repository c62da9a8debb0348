/**
 * Who a call runs as, and what each role may call (docs/trust.md). Pure:
 * no I/O.
 */
import { Code, ConnectError, createContextKey, type HandlerContext } from "@connectrpc/connect";

export type Role = "client" | "dispatcher" | "admin";
export const ROLES: readonly Role[] = ["client", "dispatcher", "admin"];

/** The tenant of rows made by admins and in local mode. */
export const DEFAULT_TENANT = "default";

export interface Principal {
  role: Role;
  /** The client's tenant; admins and dispatchers act for every tenant. */
  tenant: string | null;
  /** Where it came from, for logs: a token id, "admin-token", "serve", "local". */
  source: string;
}

/**
 * Which rows of files, batches and requests a call may see: one tenant's,
 * or all. Storage functions that read those tables take one.
 */
export type TenantScope = { all: true } | { all: false; tenant: string };

export const ALL_TENANTS: TenantScope = Object.freeze({ all: true });

/** The scope of `p`: clients see their tenant, everyone else all. */
export function scopeOf(p: Principal): TenantScope {
  return p.role === "client" && p.tenant !== null ? { all: false, tenant: p.tenant } : ALL_TENANTS;
}

/** The tenant a row made by `p` belongs to. */
export function tenantOf(p: Principal): string {
  return p.tenant ?? DEFAULT_TENANT;
}

/** The principal of a call; the auth interceptor sets it. Default: unauthenticated callers never reach a handler. */
export const PRINCIPAL = createContextKey<Principal | undefined>(undefined, {
  description: "the authenticated caller",
});

/** Services each role may call, by proto type name. Health is open to everyone. */
const ALLOWED: Record<Role, ReadonlySet<string>> = {
  client: new Set(["fusillade.v1.BatchService"]),
  dispatcher: new Set(["fusillade.v1.DispatchService"]),
  admin: new Set([
    "fusillade.v1.BatchService",
    "fusillade.v1.DispatchService",
    "fusillade.v1.AdminService",
  ]),
};

export const OPEN_SERVICES: ReadonlySet<string> = new Set(["grpc.health.v1.Health"]);

/** Whether `role` may call methods of `service`. */
export function mayCall(role: Role, service: string): boolean {
  return OPEN_SERVICES.has(service) || ALLOWED[role].has(service);
}

/** The principal of a call (set by the auth interceptor before any handler runs). */
export function principalOf(ctx: HandlerContext): Principal {
  const p = ctx.values.get(PRINCIPAL);
  if (p === undefined)
    throw new ConnectError("the call is not authenticated", Code.Unauthenticated);
  return p;
}

/** The SQL parameter of a scope: null for all tenants, else the tenant. */
export function tenantParam(scope: TenantScope): string | null {
  return scope.all ? null : scope.tenant;
}
