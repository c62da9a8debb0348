/**
 * The OpenAI-compatible API as a plain route on the API port
 * (docs/openai-api.md): every path under /v1/ is answered here, in OpenAI's
 * shapes; Connect's paths (/fusillade.v1.*) never start with /v1/.
 */

import type { ApiDeps } from "../api/deps.js";
import { AuthError, type Authenticator } from "../auth/authenticator.js";
import { mayCall, type Principal } from "../auth/principal.js";
import type { PlainRoute } from "../plain-route.js";
import { cancelBatchRoute, createBatchRoute, getBatchRoute, listBatchesRoute } from "./batches.js";
import { Call } from "./call.js";
import {
  createFile,
  deleteFileRoute,
  fileContentRoute,
  getFileRoute,
  listFilesRoute,
} from "./files.js";
import { OpenAiError, type Req, type Res, sendError, toOpenAiError } from "./http.js";

type Handler = (call: Call, id: string) => Promise<void>;

/** Method and path pattern → handler; `id` is the pattern's one capture. */
const ROUTES: ReadonlyArray<readonly [string, RegExp, Handler]> = [
  ["POST", /^\/v1\/files$/, (c) => createFile(c)],
  ["GET", /^\/v1\/files$/, (c) => listFilesRoute(c)],
  ["GET", /^\/v1\/files\/([^/]+)$/, getFileRoute],
  ["DELETE", /^\/v1\/files\/([^/]+)$/, deleteFileRoute],
  ["GET", /^\/v1\/files\/([^/]+)\/content$/, fileContentRoute],
  ["POST", /^\/v1\/batches$/, (c) => createBatchRoute(c)],
  ["GET", /^\/v1\/batches$/, (c) => listBatchesRoute(c)],
  ["GET", /^\/v1\/batches\/([^/]+)$/, getBatchRoute],
  ["POST", /^\/v1\/batches\/([^/]+)\/cancel$/, cancelBatchRoute],
];

/**
 * The caller, authenticated as a Connect call is. In local mode an SDK
 * always sends some key: one that is not a token is taken as no credential
 * (accepted from loopback only, like any call without one).
 */
async function principalOf(auth: Authenticator, req: Req): Promise<Principal> {
  const authorization = req.headers.authorization ?? null;
  const host = req.headers.host ?? ("authority" in req ? req.authority : null) ?? null;
  let p: Principal;
  try {
    try {
      p = await auth.authenticate(authorization, host);
    } catch (e) {
      if (!(e instanceof AuthError && e.kind === "unauthenticated" && auth.localMode)) throw e;
      p = await auth.authenticate(null, host);
    }
  } catch (e) {
    if (!(e instanceof AuthError)) throw e;
    throw e.kind === "unauthenticated"
      ? new OpenAiError(401, "authentication_error", e.message, null, "invalid_api_key")
      : new OpenAiError(403, "permission_denied_error", e.message);
  }
  if (!mayCall(p.role, "fusillade.v1.BatchService")) {
    throw new OpenAiError(
      403,
      "permission_denied_error",
      `a ${p.role} token may not call this API`,
    );
  }
  return p;
}

async function handle(deps: ApiDeps, auth: Authenticator, req: Req, res: Res): Promise<void> {
  const url = new URL(req.url ?? "/", "http://fusillade.invalid");
  const method = req.method ?? "GET";
  let match: [Handler, string] | undefined;
  let pathKnown = false;
  for (const [m, re, h] of ROUTES) {
    const found = re.exec(url.pathname);
    if (found === null) continue;
    pathKnown = true;
    if (m === method) {
      match = [h, decodeURIComponent(found[1] ?? "")];
      break;
    }
  }
  if (match === undefined) {
    throw pathKnown
      ? new OpenAiError(405, "invalid_request_error", `${method} is not allowed on ${url.pathname}`)
      : new OpenAiError(404, "not_found_error", `no route ${method} ${url.pathname}`);
  }
  const principal = await principalOf(auth, req);
  await match[0](new Call(deps, req, res, principal, url.searchParams), match[1]);
}

/** Answers every request under /v1/. */
export function openaiRoute(deps: ApiDeps, auth: Authenticator): PlainRoute {
  const log = (e: unknown) => deps.log.error({ err: e }, "OpenAI API request failed");
  return (req, res) => {
    if (!(req.url ?? "").startsWith("/v1/")) return false;
    // The server hands plain routes Node's own request and response objects.
    const r = req as unknown as Req;
    const w = res as unknown as Res;
    handle(deps, auth, r, w).catch((e: unknown) => sendError(w, toOpenAiError(e, log)));
    return true;
  };
}
