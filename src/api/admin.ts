/** AdminService: model limits (concurrency and rates), tenants and API tokens. */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { ROLES, type Role } from "../auth/principal.js";
import type { TokenRecord } from "../auth/tokens.js";
import { InvalidArgumentError, NotFoundError } from "../domain/errors.js";
import { validateModel, validateText } from "../domain/templates.js";
import {
  type AdminService,
  ApiTokenSchema,
  CreateTokenResponseSchema,
  ListModelLimitsResponseSchema,
  ListTenantsResponseSchema,
  ListTokensResponseSchema,
  RevokeTokenResponseSchema,
  type SetModelLimitRequest,
  SetModelLimitResponseSchema,
  SetTenantWeightResponseSchema,
  TenantSchema,
  TokenRole,
} from "../gen/fusillade/v1/admin_service_pb.js";
import { createToken, listTokens, revokeToken } from "../storage/api-tokens.js";
import { listTenants, setTenantWeight, type TenantRecord } from "../storage/fair-share.js";
import { listModelLimits, type ModelLimitChange, setModelLimit } from "../storage/model-limits.js";
import { pageSize } from "../storage/pages.js";
import { toProtoModelLimit, toTimestamp } from "./convert.js";
import type { ApiDeps } from "./deps.js";

/** Highest limit accepted. */
const MAX_LIMIT = 1_000_000;
/** Highest rate accepted, per minute (requests or tokens; the columns are `integer`). */
const MAX_RATE = 1_000_000_000;
/** Highest tenant weight (docs/fair-share.md). */
const MAX_WEIGHT = 1000;

function toProtoTenant(t: TenantRecord) {
  return create(TenantSchema, {
    name: t.name,
    weight: t.weight,
    isDefault: t.isDefault,
    inFlight: t.inFlight,
    activeBatches: t.activeBatches,
  });
}

/** A rate (`rpm`, `tpm`) from a request: set, cleared, or (unset) unchanged. */
function rateChange(
  field: "rpm" | "tpm",
  value: number | undefined,
  clear: boolean,
): number | null | undefined {
  if (clear) {
    if (value !== undefined) {
      throw new InvalidArgumentError(field, `is set together with clear_${field}`);
    }
    return null;
  }
  if (value !== undefined && (value < 1 || value > MAX_RATE)) {
    throw new InvalidArgumentError(field, `must be between 1 and ${MAX_RATE} per minute`);
  }
  return value;
}

/** The change a SetModelLimitRequest asks for; InvalidArgumentError names the field at fault. */
function toLimitChange(req: SetModelLimitRequest): ModelLimitChange {
  const change: ModelLimitChange = {
    rpm: rateChange("rpm", req.rpm, req.clearRpm),
    tpm: rateChange("tpm", req.tpm, req.clearTpm),
  };
  if (!req.keepLimit) {
    if (!req.clearLimit && (req.limit < 0 || req.limit > MAX_LIMIT)) {
      throw new InvalidArgumentError("limit", `must be between 0 and ${MAX_LIMIT}`);
    }
    change.limit = req.clearLimit ? null : req.limit;
  }
  return change;
}

const TO_ROLE: Partial<Record<TokenRole, Role>> = {
  [TokenRole.CLIENT]: "client",
  [TokenRole.DISPATCHER]: "dispatcher",
  [TokenRole.ADMIN]: "admin",
};
const FROM_ROLE: Record<Role, TokenRole> = {
  client: TokenRole.CLIENT,
  dispatcher: TokenRole.DISPATCHER,
  admin: TokenRole.ADMIN,
};

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Tenant names: what fits a label, a path segment and a log line. */
const TENANT = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/** Checks a tenant name (InvalidArgument on `tenant`). */
export function validateTenant(tenant: string): void {
  if (!TENANT.test(tenant)) {
    throw new InvalidArgumentError(
      "tenant",
      "must be 1–100 letters, digits, '.', '_' or '-', starting with a letter or digit",
    );
  }
}

function toProtoToken(t: TokenRecord) {
  return create(ApiTokenSchema, {
    id: t.id,
    name: t.name,
    role: FROM_ROLE[t.role],
    tenant: t.tenant ?? "",
    createTime: toTimestamp(t.createdAt),
    revokeTime: toTimestamp(t.revokedAt),
  });
}

/** The AdminService methods (routes: ./route-methods.ts). */
export function adminMethods(
  deps: ApiDeps,
): Omit<ServiceImpl<typeof AdminService>, "setRoute" | "listRoutes" | "deleteRoute"> {
  const defaultLimit = deps.config.defaultLimit;
  return {
    async createToken(req) {
      const role = TO_ROLE[req.role];
      if (role === undefined) {
        throw new InvalidArgumentError("role", `must be one of ${ROLES.join(", ")}`);
      }
      if (role === "client" && req.tenant === "") {
        throw new InvalidArgumentError("tenant", "is required for a client token");
      }
      if (role !== "client" && req.tenant !== "") {
        throw new InvalidArgumentError("tenant", `applies to client tokens only, not ${role}`);
      }
      if (req.tenant !== "") validateTenant(req.tenant);
      const name = validateText(req.name, "name");
      if (Buffer.byteLength(name) > 200)
        throw new InvalidArgumentError("name", "is longer than 200 bytes");
      const { token, record } = await createToken(deps.db, {
        name,
        role,
        tenant: role === "client" ? req.tenant : null,
      });
      deps.log.info({ tokenId: record.id, role, tenant: record.tenant }, "token created");
      return create(CreateTokenResponseSchema, { token: toProtoToken(record), secret: token });
    },
    async listTokens() {
      const tokens = await listTokens(deps.db);
      return create(ListTokensResponseSchema, { tokens: tokens.map(toProtoToken) });
    },
    async revokeToken(req) {
      const t = UUID.test(req.id) ? await revokeToken(deps.db, req.id) : undefined;
      if (t === undefined) throw new NotFoundError("token", req.id);
      deps.tokensChanged?.();
      deps.log.info({ tokenId: t.id }, "token revoked");
      return create(RevokeTokenResponseSchema, { token: toProtoToken(t) });
    },
    async setModelLimit(req) {
      if (req.model === "") throw new InvalidArgumentError("model", "is required");
      const model = validateModel(req.model, "model");
      const m = await setModelLimit(deps.db, model, toLimitChange(req));
      deps.log.info({ model, limit: m.limit, rpm: m.rpm, tpm: m.tpm }, "model limits set");
      return create(SetModelLimitResponseSchema, {
        modelLimit: toProtoModelLimit(m, defaultLimit),
      });
    },
    async setTenantWeight(req) {
      if (req.tenant === "") throw new InvalidArgumentError("tenant", "is required");
      validateTenant(req.tenant);
      if (!req.clearWeight && (req.weight < 1 || req.weight > MAX_WEIGHT)) {
        throw new InvalidArgumentError("weight", `must be between 1 and ${MAX_WEIGHT}`);
      }
      const weight = req.clearWeight ? null : req.weight;
      const t = await setTenantWeight(deps.db, req.tenant, weight);
      deps.log.info({ tenant: t.name, weight: t.weight }, "tenant weight set");
      return create(SetTenantWeightResponseSchema, { tenant: toProtoTenant(t) });
    },
    async listTenants() {
      const tenants = await listTenants(deps.db);
      return create(ListTenantsResponseSchema, { tenants: tenants.map(toProtoTenant) });
    },
    async listModelLimits(req) {
      const page = await listModelLimits(deps.db, pageSize(req.pageSize), req.pageToken);
      return create(ListModelLimitsResponseSchema, {
        modelLimits: page.limits.map((m) => toProtoModelLimit(m, defaultLimit)),
        nextPageToken: page.nextPageToken,
        defaultLimit,
      });
    },
  };
}
