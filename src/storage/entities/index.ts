/**
 * TypeORM entities: one per table, column for column what migrations/ made
 * (test/integration/schema.test.ts runs the schema builder against a migrated
 * database and fails on any difference). Migrations own the schema — never
 * `synchronize` — and the entities serve the plain CRUD paths (tokens, tenants,
 * limits); hot-path statements are hand-written and named in src/storage and
 * src/leases. What entities cannot say (the requests trigger, the plpgsql
 * functions, `lease_token_seq`) lives in the migrations only.
 */
import { BatchEntity } from "./batches.js";
import { ModelLimitEntity, RateShareEntity, SlotGrantEntity, TenantEntity } from "./capacity.js";
import { FileEntity, RequestTemplateEntity } from "./files.js";
import { RequestEntity, RequestEventEntity } from "./requests.js";
import { ModelRouteEntity } from "./routes.js";
import { ApiKeyEntity, ApiTokenEntity } from "./trust.js";

export {
  ApiKeyEntity,
  ApiTokenEntity,
  BatchEntity,
  FileEntity,
  ModelLimitEntity,
  ModelRouteEntity,
  RateShareEntity,
  RequestEntity,
  RequestEventEntity,
  RequestTemplateEntity,
  SlotGrantEntity,
  TenantEntity,
};

/** Every entity, as classes (globs are not resolved under the test runner). */
export const ENTITIES = [
  ApiKeyEntity,
  ApiTokenEntity,
  FileEntity,
  RequestTemplateEntity,
  BatchEntity,
  RequestEntity,
  RequestEventEntity,
  ModelLimitEntity,
  SlotGrantEntity,
  RateShareEntity,
  TenantEntity,
  ModelRouteEntity,
];
