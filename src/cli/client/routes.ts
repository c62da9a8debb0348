/**
 * `fusillade routes set|list|delete` (admin), and the routes `submit` takes
 * without --endpoint (docs/openai-api.md).
 */

import { createReadStream } from "node:fs";
import { readFile } from "node:fs/promises";
import { createInterface } from "node:readline";
import { Code, ConnectError } from "@connectrpc/connect";
import type { ModelRoute } from "../../gen/fusillade/v1/admin_service_pb.js";
import { CliError, type Connection } from "./connection.js";
import { print, printJson, table } from "./views.js";

/** A route for --json (never a key: the server does not return it). */
export function routeView(r: ModelRoute) {
  return {
    tenant: r.tenant === "" ? null : r.tenant,
    model: r.model,
    endpoint: r.endpoint,
    has_api_key: r.hasApiKey,
  };
}

/** The key in --api-key-file: its first line, trimmed (a trailing newline is not part of it). */
async function readKeyFile(file: string): Promise<string> {
  const text = await readFile(file, "utf8").catch((e: Error) => {
    throw new CliError(`--api-key-file: cannot read ${file} (${e.message})`);
  });
  const key = (text.split(/\r?\n/)[0] ?? "").trim();
  if (key === "") throw new CliError(`--api-key-file: ${file} holds no key on its first line`);
  return key;
}

/** routes set MODEL --endpoint URL [--api-key-file FILE] [--tenant T]. */
export async function routesSetAction(
  conn: Connection,
  json: boolean,
  model: string,
  o: { endpoint: string; apiKeyFile?: string; tenant?: string },
): Promise<void> {
  const apiKey = o.apiKeyFile === undefined ? "" : await readKeyFile(o.apiKeyFile);
  const res = await conn.admin.setRoute({
    tenant: o.tenant ?? "",
    model,
    endpoint: o.endpoint,
    apiKey,
  });
  const v = routeView(res.route!);
  if (json) return printJson(v);
  print(
    `${v.model} → ${v.endpoint} (${v.has_api_key ? "with an API key" : "no API key"}${v.tenant === null ? "" : `, tenant ${v.tenant}`})`,
  );
}

/** routes list [--tenant T]. */
export async function routesListAction(
  conn: Connection,
  json: boolean,
  tenant: string | undefined,
): Promise<void> {
  const res = await conn.admin.listRoutes({ tenant: tenant ?? "" });
  const views = res.routes.map(routeView);
  if (json) return printJson({ routes: views });
  if (views.length === 0) {
    print("no routes: `fusillade routes set MODEL --endpoint URL` (MODEL '*' for every model)");
    return;
  }
  print(
    table(
      ["TENANT", "MODEL", "ENDPOINT", "API KEY"],
      views.map((v) => [v.tenant ?? "(all)", v.model, v.endpoint, v.has_api_key ? "yes" : "no"]),
    ),
  );
}

/** routes delete MODEL [--tenant T]. */
export async function routesDeleteAction(
  conn: Connection,
  json: boolean,
  model: string,
  tenant: string | undefined,
): Promise<void> {
  await conn.admin.deleteRoute({ tenant: tenant ?? "", model });
  if (json) return printJson({ deleted: { tenant: tenant ?? null, model } });
  print(`route of ${model} deleted`);
}

/** The distinct models of a JSONL batch file (body.model of each line), read as a stream. */
export async function modelsOf(path: string): Promise<string[]> {
  const models = new Set<string>();
  const lines = createInterface({ input: createReadStream(path), crlfDelay: Infinity });
  for await (const line of lines) {
    if (line.trim() === "") continue;
    try {
      const model = (JSON.parse(line) as { body?: { model?: unknown } }).body?.model;
      if (typeof model === "string") models.add(model);
    } catch {
      // the server names the line
    }
  }
  return [...models].sort();
}

/**
 * The route each model of `path` takes (operator routes: what the server
 * applies to a tenant without routes of its own), one line per model;
 * throws naming the models without one. A token that may not list routes
 * leaves the choice to the server (which names any model without a route).
 */
export async function routesForSubmit(conn: Connection, path: string): Promise<string[]> {
  let routes: ModelRoute[];
  try {
    routes = (await conn.admin.listRoutes({ tenant: "" })).routes;
  } catch (e) {
    if (ConnectError.from(e).code !== Code.PermissionDenied) throw e;
    return ["no --endpoint: the server sends each model where its routes say"];
  }
  const operator = new Map(routes.filter((r) => r.tenant === "").map((r) => [r.model, r]));
  const lines: string[] = [];
  const missing: string[] = [];
  for (const model of await modelsOf(path)) {
    const r = operator.get(model) ?? operator.get("*");
    if (r === undefined) missing.push(model);
    else lines.push(`${model} → ${r.endpoint} (route ${r.model === "*" ? "'*'" : r.model})`);
  }
  if (missing.length > 0) {
    throw new CliError(
      `no --endpoint and no route for model${missing.length > 1 ? "s" : ""} ${missing.join(", ")}: give --endpoint, or set one with \`fusillade routes set MODEL --endpoint URL\` (MODEL '*' for every model)`,
    );
  }
  const tenants = new Set(routes.filter((r) => r.tenant !== "").map((r) => r.tenant));
  if (tenants.size > 0) {
    lines.push(
      `tenants with routes of their own, used for their tokens: ${[...tenants].join(", ")}`,
    );
  }
  return lines;
}
