/** /v1/batches: create, read, list (newest first), cancel, through BatchService's own functions. */
import { create } from "@bufbuild/protobuf";
import { startBatch } from "../api/batches.js";
import { scopeOf } from "../auth/principal.js";
import { CreateBatchRequestSchema } from "../gen/fusillade/v1/batch_service_pb.js";
import { type BatchRecord, cancelBatch, getBatch, listBatches } from "../storage/batches.js";
import { getFile } from "../storage/files.js";
import { batchEndpoints, firstOtherUrl } from "../storage/openai-views.js";
import type { Call } from "./call.js";
import { badParam, readJson, sendJson } from "./http.js";
import { afterToken, listObject } from "./lists.js";
import { batchObject } from "./objects.js";

/** Batch objects of `batches`, each with its endpoint. */
async function objects(call: Call, batches: BatchRecord[]) {
  const endpoints = await batchEndpoints(
    call.deps.db,
    batches.map((b) => b.id),
  );
  return batches.map((b) => batchObject(b, endpoints.get(b.id) ?? ""));
}

function stringField(body: Record<string, unknown>, name: string, required: boolean): string {
  const v = body[name];
  if (v === undefined || v === null) {
    if (required) throw badParam(name, "is required");
    return "";
  }
  if (typeof v !== "string") throw badParam(name, "must be a string");
  return v;
}

function intField(body: Record<string, unknown>, name: string): number | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v)) throw badParam(name, "must be an integer");
  return v;
}

function metadataField(body: Record<string, unknown>): Record<string, string> {
  const v = body.metadata;
  if (v === undefined || v === null) return {};
  if (typeof v !== "object" || Array.isArray(v)) throw badParam("metadata", "must be an object");
  for (const [k, s] of Object.entries(v)) {
    if (typeof s !== "string") throw badParam(`metadata.${k}`, "must be a string");
  }
  return v as Record<string, string>;
}

/** POST /v1/batches */
export async function createBatchRoute(call: Call): Promise<void> {
  const body = await readJson(call.req);
  const fileId = stringField(body, "input_file_id", true);
  const endpoint = stringField(body, "endpoint", true);
  if (!endpoint.startsWith("/"))
    throw badParam("endpoint", 'must be a path such as "/v1/chat/completions"');
  const scope = scopeOf(call.principal);
  await getFile(call.deps.db, scope, fileId); // NOT_FOUND before anything else
  const other = await firstOtherUrl(call.deps.db, fileId, endpoint);
  if (other !== undefined) {
    throw badParam(
      "endpoint",
      `line ${other.line} of the file has url ${JSON.stringify(other.url)}; every line's url must be the batch's endpoint ${JSON.stringify(endpoint)}`,
    );
  }
  const maxRetries = intField(body, "max_retries");
  const batch = await startBatch(
    call.deps,
    scope,
    create(CreateBatchRequestSchema, {
      fileId,
      completionWindow: stringField(body, "completion_window", false),
      metadata: metadataField(body),
      priority: intField(body, "priority") ?? 0,
      retention: stringField(body, "retention", false),
      retryPolicy: maxRetries === undefined ? undefined : { maxRetries },
    }),
  );
  sendJson(call.res, 200, batchObject(batch, endpoint));
}

/** GET /v1/batches/{id} */
export async function getBatchRoute(call: Call, id: string): Promise<void> {
  const b = await getBatch(call.deps.db, scopeOf(call.principal), id);
  sendJson(call.res, 200, (await objects(call, [b]))[0]);
}

/** POST /v1/batches/{id}/cancel */
export async function cancelBatchRoute(call: Call, id: string): Promise<void> {
  const b = await cancelBatch(call.deps.db, scopeOf(call.principal), id);
  sendJson(call.res, 200, (await objects(call, [b]))[0]);
}

/** GET /v1/batches (newest first; `after` a batch id, `limit` 1..100, default 20). */
export async function listBatchesRoute(call: Call): Promise<void> {
  const limit = call.intParam("limit", 20, 1, 100);
  const pageToken = await afterToken(call, "batches");
  const page = await listBatches(call.deps.db, scopeOf(call.principal), {
    limit,
    pageToken,
    fileId: "",
  });
  sendJson(call.res, 200, listObject(await objects(call, page.batches), page.nextPageToken !== ""));
}
