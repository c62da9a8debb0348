/**
 * The client's helpers, a flat table per group (files, batches, requests),
 * each a call of the generated BatchService client and a conversion of its
 * answer to the plain views (views.ts).
 */
import { randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { basename } from "node:path";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { type Client, Code } from "@connectrpc/connect";
import {
  type BatchService,
  GetBatchResultsRequest_Kind,
  GetBatchResultsResponse_Kind,
  type UploadFileRequest,
  UploadFileRequestSchema,
} from "../gen/fusillade/v1/batch_service_pb.js";
import { call, FusilladeError, stream } from "./errors.js";
import type { FusilladeClient } from "./index.js";
import { linesOf, RESULT_LINES_PER_MESSAGE } from "./result-lines.js";
import {
  attemptOf,
  batchOf,
  fileOf,
  isBatchTerminal,
  modelLimitOf,
  REQUEST_STATE_BY_NAME,
  requestOf,
  statusOf,
} from "./views.js";

type Batches = Client<typeof BatchService>;

/** Bytes per UploadFile message: well under any message limit. */
const CHUNK_BYTES = 1024 * 1024;

function bodyText(body: unknown): string {
  return typeof body === "string" ? body : JSON.stringify(body);
}

function bytesOf(text: string | Uint8Array): Uint8Array {
  return typeof text === "string" ? new TextEncoder().encode(text) : text;
}

/** createFile and uploadFile. */
export function fileMethods(
  batch: Batches,
): Pick<FusilladeClient, "createFile" | "uploadFile" | "getFile"> {
  return {
    createFile: (input) =>
      call(async () => {
        const res =
          "templates" in input
            ? await batch.createFile({
                requestId: randomUUID(),
                filename: input.filename ?? "",
                templates: input.templates.map((t) => ({
                  customId: t.customId ?? "",
                  endpoint: t.endpoint,
                  method: t.method ?? "",
                  path: t.path,
                  body: bodyText(t.body),
                  model: t.model ?? "",
                  apiKey: t.apiKey ?? "",
                })),
              })
            : await batch.createFile({
                requestId: randomUUID(),
                filename: input.filename ?? "",
                jsonl: bytesOf(input.jsonl),
                endpoint: input.endpoint,
                apiKey: input.apiKey ?? "",
              });
        return fileOf(res.file!);
      }),

    uploadFile: (source, opts) =>
      call(async () => {
        const chunks: AsyncIterable<Uint8Array> =
          typeof source === "string"
            ? createReadStream(source, { highWaterMark: CHUNK_BYTES })
            : source;
        async function* messages(): AsyncGenerator<UploadFileRequest> {
          yield create(UploadFileRequestSchema, {
            part: {
              case: "header",
              value: {
                requestId: randomUUID(),
                filename: opts.filename ?? (typeof source === "string" ? basename(source) : ""),
                endpoint: opts.endpoint,
                apiKey: opts.apiKey ?? "",
              },
            },
          });
          for await (const chunk of chunks) {
            yield create(UploadFileRequestSchema, { part: { case: "chunk", value: chunk } });
          }
        }
        return fileOf((await batch.uploadFile(messages())).file!);
      }),

    getFile: (fileId) => call(async () => fileOf((await batch.getFile({ fileId })).file!)),
  };
}

/** Starting, reading, watching, cancelling and retrying batches, and their models. */
export function batchMethods(
  batch: Batches,
): Pick<
  FusilladeClient,
  | "createBatch"
  | "getBatch"
  | "getBatchStatus"
  | "watchBatch"
  | "cancelBatch"
  | "retryBatch"
  | "listModels"
> {
  return {
    createBatch: (fileId, o = {}) =>
      call(async () => {
        const p = o.retryPolicy;
        const res = await batch.createBatch({
          requestId: o.requestId ?? randomUUID(),
          fileId,
          completionWindow: o.completionWindow ?? "",
          metadata: o.metadata ?? {},
          priority: o.priority ?? 0,
          retryPolicy: p && {
            maxRetries: p.maxRetries,
            initialBackoff:
              p.initialBackoffMs === undefined ? undefined : durationFromMs(p.initialBackoffMs),
            maxBackoff: p.maxBackoffMs === undefined ? undefined : durationFromMs(p.maxBackoffMs),
          },
        });
        return batchOf(res.batch!);
      }),

    getBatch: (batchId) => call(async () => batchOf((await batch.getBatch({ batchId })).batch!)),

    getBatchStatus: (batchId) =>
      call(async () => statusOf(await batch.getBatchStatus({ batchId }))),

    watchBatch: (batchId, o = {}) =>
      stream(async function* () {
        const minInterval =
          o.minIntervalMs === undefined ? undefined : durationFromMs(o.minIntervalMs);
        for await (const m of batch.watchBatch({ batchId, minInterval }, { signal: o.signal })) {
          const b = batchOf(m.batch!);
          yield b;
          if (isBatchTerminal(b.state)) return;
        }
      }),

    cancelBatch: (batchId) =>
      call(async () => batchOf((await batch.cancelBatch({ batchId })).batch!)),

    retryBatch: (batchId, o = {}) =>
      call(async () => {
        const res = await batch.retryBatch({
          batchId,
          customIds: o.customIds ?? [],
          requestIds: o.requestIds ?? [],
          completionWindow: o.completionWindow ?? "",
          resume: o.resume ?? false,
        });
        return { batch: batchOf(res.batch!), retried: Number(res.retriedCount) };
      }),

    listModels: (o = {}) =>
      call(async () => {
        const res = await batch.listBatchModels({ batchId: o.batchId ?? "" });
        return res.modelLimits.map(modelLimitOf);
      }),
  };
}

/** A batch's requests, one request with its attempts, and the result lines. */
export function requestMethods(
  batch: Batches,
): Pick<FusilladeClient, "listRequests" | "getRequest" | "results"> {
  return {
    listRequests: (batchId, f = {}) =>
      stream(async function* () {
        let pageToken = "";
        do {
          const page = await batch.listBatchRequests({
            batchId,
            pageToken,
            pageSize: f.pageSize ?? 0,
            states: (f.states ?? []).map((s) => {
              const v = REQUEST_STATE_BY_NAME[s];
              if (v === undefined) {
                throw new FusilladeError(
                  Code.InvalidArgument,
                  `states: unknown request state ${JSON.stringify(s)}`,
                );
              }
              return v;
            }),
            models: f.models ?? [],
          });
          yield page.requests.map(requestOf);
          pageToken = page.nextPageToken;
        } while (pageToken !== "");
      }),

    getRequest: (key) =>
      call(async () => {
        const res = await batch.getRequest(key);
        return { request: requestOf(res.request!), attempts: res.attempts.map(attemptOf) };
      }),

    results: (batchId, o = {}) =>
      stream(async function* () {
        const kind =
          o.only === "output"
            ? GetBatchResultsRequest_Kind.OUTPUT
            : o.only === "errors"
              ? GetBatchResultsRequest_Kind.ERRORS
              : GetBatchResultsRequest_Kind.ALL;
        const answers = batch.getBatchResults({
          batchId,
          kind,
          linesPerMessage: RESULT_LINES_PER_MESSAGE,
        });
        for await (const m of answers) {
          for (const l of linesOf(m)) {
            if (
              l.kind === GetBatchResultsResponse_Kind.OUTPUT ||
              l.kind === GetBatchResultsResponse_Kind.ERROR
            ) {
              yield JSON.parse(l.line);
            }
          }
        }
      }),
  };
}
