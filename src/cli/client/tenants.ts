/** `fusillade tenants set-weight|list`: tenant weights in fair share (docs/fair-share.md). Admin only. */
import type { Tenant } from "../../gen/fusillade/v1/admin_service_pb.js";
import type { Connection } from "./connection.js";
import { print, printJson, table } from "./views.js";

/** A tenant for --json. */
export function tenantView(t: Tenant) {
  return {
    name: t.name,
    weight: t.weight,
    is_default: t.isDefault,
    in_flight: t.inFlight,
    active_batches: t.activeBatches,
  };
}

/** tenants set-weight TENANT WEIGHT|default. */
export async function tenantsSetWeightAction(
  conn: Connection,
  json: boolean,
  tenant: string,
  weight: number | "default",
): Promise<void> {
  const res = await conn.admin.setTenantWeight(
    weight === "default" ? { tenant, clearWeight: true } : { tenant, weight },
  );
  const v = tenantView(res.tenant!);
  if (json) return printJson(v);
  print(
    `${v.name}: weight ${v.weight}${v.is_default ? " (default)" : ""}, ${v.active_batches} unfinished batches, ${v.in_flight} claimed`,
  );
}

/** tenants list. */
export async function tenantsListAction(conn: Connection, json: boolean): Promise<void> {
  const res = await conn.admin.listTenants({});
  const views = res.tenants.map(tenantView);
  if (json) return printJson({ tenants: views });
  print(
    table(
      ["TENANT", "WEIGHT", "IN FLIGHT", "ACTIVE BATCHES"],
      views.map((v) => [
        v.name,
        `${v.weight}${v.is_default ? " (default)" : ""}`,
        String(v.in_flight),
        String(v.active_batches),
      ]),
    ),
  );
  print("tenants without a weight of their own weigh 1");
}
