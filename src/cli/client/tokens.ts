/** `fusillade tokens create|list|revoke`: API tokens (docs/trust.md). Admin only. */
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { type ApiToken, TokenRole } from "../../gen/fusillade/v1/admin_service_pb.js";
import { CliError, type Connection } from "./connection.js";
import { print, printJson, table } from "./views.js";

const ROLES: Record<string, TokenRole> = {
  client: TokenRole.CLIENT,
  dispatcher: TokenRole.DISPATCHER,
  admin: TokenRole.ADMIN,
};
const ROLE_NAMES = new Map(Object.entries(ROLES).map(([k, v]) => [v, k]));

function tokenView(t: ApiToken) {
  return {
    id: t.id,
    name: t.name,
    role: ROLE_NAMES.get(t.role) ?? "unknown",
    tenant: t.tenant === "" ? null : t.tenant,
    create_time: t.createTime ? timestampDate(t.createTime).toISOString() : null,
    revoke_time: t.revokeTime ? timestampDate(t.revokeTime).toISOString() : null,
  };
}

export async function tokensCreateAction(
  conn: Connection,
  json: boolean,
  o: { role: string; tenant?: string; name?: string },
): Promise<void> {
  const role = ROLES[o.role];
  if (role === undefined) {
    throw new CliError(
      `--role must be one of ${Object.keys(ROLES).join(", ")}, got ${JSON.stringify(o.role)}`,
      2,
    );
  }
  const r = await conn.admin.createToken({ role, tenant: o.tenant ?? "", name: o.name ?? "" });
  const v = tokenView(r.token!);
  if (json) {
    printJson({ id: v.id, token: r.secret, role: v.role, tenant: v.tenant });
    return;
  }
  print(r.secret);
  process.stderr.write(
    `token ${v.id} (${v.role}${v.tenant ? `, tenant ${v.tenant}` : ""}): shown once, keep it now. Use it with --token or FUSILLADE_TOKEN.\n`,
  );
}

export async function tokensListAction(conn: Connection, json: boolean): Promise<void> {
  const r = await conn.admin.listTokens({});
  const views = r.tokens.map(tokenView);
  if (json) {
    printJson({ tokens: views });
    return;
  }
  print(
    table(
      ["ID", "ROLE", "TENANT", "NAME", "CREATED", "REVOKED"],
      views.map((v) => [
        v.id,
        v.role,
        v.tenant ?? "",
        v.name,
        v.create_time ?? "",
        v.revoke_time ?? "",
      ]),
    ),
  );
}

export async function tokensRevokeAction(
  conn: Connection,
  json: boolean,
  id: string,
): Promise<void> {
  const r = await conn.admin.revokeToken({ id });
  const v = tokenView(r.token!);
  if (json) printJson(v);
  else print(`revoked token ${v.id}`);
}
