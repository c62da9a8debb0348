/** AdminService: model limits. */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { InvalidArgumentError } from "../domain/errors.js";
import { validateModel } from "../domain/templates.js";
import {
  type AdminService,
  ListModelLimitsResponseSchema,
  SetModelLimitResponseSchema,
} from "../gen/fusillade/v1/admin_service_pb.js";
import { ModelLimitSchema } from "../gen/fusillade/v1/resources_pb.js";
import { listModelLimits, type ModelLimitRecord, setModelLimit } from "../storage/model-limits.js";
import { pageSize } from "../storage/pages.js";
import { toTimestamp } from "./convert.js";
import type { ApiDeps } from "./deps.js";

/** Highest limit accepted. */
const MAX_LIMIT = 1_000_000;

function toProto(m: ModelLimitRecord, defaultLimit: number) {
  return create(ModelLimitSchema, {
    model: m.model,
    limit: m.limit ?? defaultLimit,
    isDefault: m.limit === null,
    inFlight: m.inFlight,
    slotsGranted: m.slotsGranted,
    pending: BigInt(m.pending),
    holdUntilTime: toTimestamp(m.holdUntil),
  });
}

/** The AdminService methods. */
export function adminMethods(deps: ApiDeps): ServiceImpl<typeof AdminService> {
  const defaultLimit = deps.config.defaultLimit;
  return {
    async setModelLimit(req) {
      if (req.model === "") throw new InvalidArgumentError("model", "is required");
      if (!req.clearLimit && (req.limit < 0 || req.limit > MAX_LIMIT)) {
        throw new InvalidArgumentError("limit", `must be between 0 and ${MAX_LIMIT}`);
      }
      const model = validateModel(req.model, "model");
      const m = await setModelLimit(deps.db, model, req.clearLimit ? null : req.limit);
      return create(SetModelLimitResponseSchema, { modelLimit: toProto(m, defaultLimit) });
    },
    async listModelLimits(req) {
      const page = await listModelLimits(deps.db, pageSize(req.pageSize), req.pageToken);
      return create(ListModelLimitsResponseSchema, {
        modelLimits: page.limits.map((m) => toProto(m, defaultLimit)),
        nextPageToken: page.nextPageToken,
        defaultLimit,
      });
    },
  };
}
