/**
 * BatchService.ListBatchModels: a read-only view, for clients, of the limits,
 * rates and use of the models their batches have work for (AdminService sets
 * and lists every model's; a client token may not call it).
 */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { principalOf, scopeOf } from "../auth/principal.js";
import {
  type BatchService,
  ListBatchModelsResponseSchema,
} from "../gen/fusillade/v1/batch_service_pb.js";
import { getBatch } from "../storage/batches.js";
import { modelLimitsOfBatches } from "../storage/model-limits.js";
import { toProtoModelLimit } from "./convert.js";
import type { ApiDeps } from "./deps.js";

/** The model views of BatchService. */
export function batchModelMethods(
  deps: ApiDeps,
): Pick<ServiceImpl<typeof BatchService>, "listBatchModels"> {
  return {
    async listBatchModels(req, ctx) {
      const scope = scopeOf(principalOf(ctx));
      // NOT_FOUND for a batch that is unknown or another tenant's.
      if (req.batchId !== "") await getBatch(deps.db, scope, req.batchId);
      const limits = await modelLimitsOfBatches(
        deps.db,
        scope,
        req.batchId === "" ? null : req.batchId,
      );
      return create(ListBatchModelsResponseSchema, {
        modelLimits: limits.map((m) => toProtoModelLimit(m, deps.config.defaultLimit)),
        defaultLimit: deps.config.defaultLimit,
      });
    },
  };
}
