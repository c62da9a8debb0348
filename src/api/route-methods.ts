/** AdminService model routes: SetRoute, ListRoutes, DeleteRoute (docs/openai-api.md). */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { endpointRefusal } from "../domain/endpoints.js";
import { InvalidArgumentError } from "../domain/errors.js";
import { validateEndpoint, validateModel, validateText } from "../domain/templates.js";
import {
  type AdminService,
  DeleteRouteResponseSchema,
  ListRoutesResponseSchema,
  ModelRouteSchema,
  SetRouteResponseSchema,
} from "../gen/fusillade/v1/admin_service_pb.js";
import {
  ANY_MODEL,
  deleteRoute,
  listRoutes,
  OPERATOR,
  type RouteRecord,
  setRoute,
} from "../storage/model-routes.js";
import { validateTenant } from "./admin.js";
import { toTimestamp } from "./convert.js";
import type { ApiDeps } from "./deps.js";

function toProtoRoute(r: RouteRecord) {
  return create(ModelRouteSchema, {
    tenant: r.tenant,
    model: r.model,
    endpoint: r.endpoint,
    hasApiKey: r.hasApiKey,
    updateTime: toTimestamp(r.updatedAt),
  });
}

/** The route's tenant ('' = the operator's) and model ('*' or a model name), checked. */
function routeKey(req: { tenant: string; model: string }): { tenant: string; model: string } {
  if (req.tenant !== OPERATOR) validateTenant(req.tenant);
  if (req.model === "") throw new InvalidArgumentError("model", "is required (a model, or *)");
  return {
    tenant: req.tenant,
    model: req.model === ANY_MODEL ? ANY_MODEL : validateModel(req.model, "model"),
  };
}

/** The route methods of AdminService. */
export function routeMethods(
  deps: ApiDeps,
): Pick<ServiceImpl<typeof AdminService>, "setRoute" | "listRoutes" | "deleteRoute"> {
  return {
    async setRoute(req) {
      const key = routeKey(req);
      const endpoint = validateEndpoint(req.endpoint, "endpoint");
      // Checked here as file endpoints are at upload: a route must not lead where files may not.
      const why = endpointRefusal(deps.endpointPolicy(), endpoint);
      if (why !== undefined) throw new InvalidArgumentError("endpoint", why);
      const apiKey = req.apiKey === "" ? null : validateText(req.apiKey, "api_key");
      const r = await setRoute(deps.db, deps.keyring, { ...key, endpoint, apiKey });
      deps.log.info(
        { tenant: r.tenant, model: r.model, endpoint: r.endpoint, hasApiKey: r.hasApiKey },
        "model route set",
      );
      return create(SetRouteResponseSchema, { route: toProtoRoute(r) });
    },
    async listRoutes(req) {
      if (req.tenant !== OPERATOR) validateTenant(req.tenant);
      const routes = await listRoutes(deps.db, req.tenant === OPERATOR ? undefined : req.tenant);
      return create(ListRoutesResponseSchema, { routes: routes.map(toProtoRoute) });
    },
    async deleteRoute(req) {
      const key = routeKey(req);
      await deleteRoute(deps.db, key.tenant, key.model);
      deps.log.info(key, "model route deleted");
      return create(DeleteRouteResponseSchema, {});
    },
  };
}
