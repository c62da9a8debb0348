/** BatchService file methods: CreateFile, UploadFile, GetFile, ListFiles, DeleteFile. */
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { principalOf, scopeOf, tenantOf } from "../auth/principal.js";
import { type EndpointPolicy, endpointRefusal } from "../domain/endpoints.js";
import { InvalidArgumentError } from "../domain/errors.js";
import {
  parseJsonlLine,
  splitLines,
  type TemplateRow,
  validateApiKey,
  validateEndpoint,
  validateTemplate,
  validateText,
} from "../domain/templates.js";
import {
  type BatchService,
  CreateFileResponseSchema,
  DeleteFileResponseSchema,
  GetFileResponseSchema,
  ListFilesResponseSchema,
  type UploadFileHeader,
  type UploadFileRequest,
  UploadFileResponseSchema,
} from "../gen/fusillade/v1/batch_service_pb.js";
import {
  createFile,
  deleteFile,
  type FileRecord,
  getFile,
  listFiles,
  type NewFile,
  uploadLane,
} from "../storage/files.js";
import { pageSize } from "../storage/pages.js";
import { spoolTemplates } from "../storage/template-spool.js";
import { toProtoFile } from "./convert.js";
import type { ApiDeps } from "./deps.js";
import { cappedBytes, cappedRows } from "./upload-caps.js";
import { UploadRoutes } from "./upload-routes.js";

/** Validated templates from JSONL byte chunks (endpoint "": to be routed). */
async function* jsonlTemplates(
  chunks: AsyncIterable<Uint8Array>,
  endpoint: string,
  apiKey: string,
): AsyncGenerator<TemplateRow> {
  // No endpoint: the model routes fill it in (./upload-routes.ts).
  const base = endpoint === "" ? "" : validateEndpoint(endpoint, "endpoint");
  if (endpoint === "" && apiKey !== "") {
    throw new InvalidArgumentError(
      "api_key",
      "applies with an endpoint only; without one, each model's route gives the key",
    );
  }
  const key = validateApiKey(apiKey, "api_key");
  for await (const { line, text } of splitLines(chunks)) {
    yield parseJsonlLine(text, line, base, key);
  }
}

/**
 * `rows`, each endpoint checked against the allow-list (once per distinct
 * endpoint). Refusals name `templates[i].endpoint`, or `endpoint` for jsonl.
 */
async function* allowedRows(
  rows: AsyncIterable<TemplateRow>,
  policy: EndpointPolicy,
  templates: boolean,
): AsyncGenerator<TemplateRow> {
  const checked = new Set<string>();
  for await (const row of rows) {
    if (!checked.has(row.endpoint)) {
      const why = endpointRefusal(policy, row.endpoint);
      if (why !== undefined) {
        throw templates
          ? new InvalidArgumentError(`templates[${row.line - 1}].endpoint`, why, row.line)
          : new InvalidArgumentError("endpoint", why);
      }
      checked.add(row.endpoint);
    }
    yield row;
  }
}

/** The stored attributes of a new file, checked. */
function newFile(filename: string, requestId: string, tenant: string): NewFile {
  return {
    filename: validateText(filename, "filename"),
    idempotencyKey: requestId === "" ? null : validateText(requestId, "request_id"),
    tenant,
  };
}

async function* once<T>(value: T): AsyncGenerator<T> {
  yield value;
}

async function* chunksAfterHeader(
  messages: AsyncIterator<UploadFileRequest>,
): AsyncGenerator<Uint8Array> {
  for (;;) {
    const next = await messages.next();
    if (next.done) return;
    const part = next.value.part;
    if (part.case === "chunk") yield part.value;
    else if (part.case === "header") {
      throw new InvalidArgumentError("header", "must be sent once, in the first message only");
    }
  }
}

/**
 * Stores a streamed JSONL upload (UploadFile, and POST /v1/files): validated
 * and capped while it streams, spooled, then inserted in one transaction.
 * An empty `endpoint` takes each model's route (./upload-routes.ts). Nothing
 * is stored once `signal` has aborted (the client went away).
 */
export async function uploadJsonl(
  deps: ApiDeps,
  tenant: string,
  header: Pick<UploadFileHeader, "filename" | "requestId" | "endpoint" | "apiKey">,
  chunks: AsyncIterable<Uint8Array>,
  signal: AbortSignal,
): Promise<FileRecord> {
  const total = { bytes: 0 };
  const meta = newFile(header.filename, header.requestId, tenant);
  const { maxUploadBytes, maxUploadLines } = deps.config;
  let rows = cappedRows(
    jsonlTemplates(cappedBytes(chunks, total, maxUploadBytes), header.endpoint, header.apiKey),
    maxUploadLines,
  );
  if (header.endpoint === "") rows = new UploadRoutes(deps.db, deps.keyring, tenant).fill(rows);
  const allowed = allowedRows(rows, deps.endpointPolicy(), false);
  // Streamed: the rows may go to Postgres while the client still sends.
  return store(deps, meta, allowed, () => total.bytes, signal, true);
}

/**
 * Spools `rows` (every check), then stores them as a file of `sizeBytes()`
 * bytes; not once `signal` has aborted. A `streamed` upload's rows are also
 * sent down a lane as they are spooled (src/storage/copy-lane.ts).
 */
async function store(
  deps: ApiDeps,
  meta: NewFile,
  rows: AsyncIterable<TemplateRow>,
  sizeBytes: () => number,
  signal: AbortSignal,
  streamed = false,
): Promise<FileRecord> {
  const fileId = randomUUID();
  const lane = streamed ? uploadLane(deps.db, meta, fileId) : undefined;
  try {
    const spooled = await spoolTemplates(rows, fileId, lane && ((b, last) => lane.write(b, last)));
    try {
      const stored = await createFile(
        deps.db,
        deps.keyring,
        meta,
        spooled,
        sizeBytes(),
        signal,
        lane,
      );
      return stored.file;
    } finally {
      await spooled.dispose();
    }
  } finally {
    lane?.drop();
  }
}

/** The file methods of BatchService. */
export function fileMethods(
  deps: ApiDeps,
): Pick<
  ServiceImpl<typeof BatchService>,
  "createFile" | "uploadFile" | "getFile" | "listFiles" | "deleteFile"
> {
  const { db } = deps;
  return {
    async createFile(req, ctx) {
      const tenant = tenantOf(principalOf(ctx));
      const hasTemplates = req.templates.length > 0;
      const hasJsonl = req.jsonl.byteLength > 0;
      if (hasTemplates === hasJsonl) {
        throw new InvalidArgumentError(
          "templates",
          "give either templates or jsonl, not both or neither",
        );
      }
      let rows: AsyncIterable<TemplateRow>;
      let size = 0;
      if (hasJsonl) {
        size = req.jsonl.byteLength;
        rows = jsonlTemplates(once(req.jsonl), req.endpoint, req.apiKey);
        if (req.endpoint === "") rows = new UploadRoutes(db, deps.keyring, tenant).fill(rows);
      } else {
        if (req.endpoint !== "") {
          throw new InvalidArgumentError(
            "endpoint",
            "applies to jsonl content; set it on each template",
          );
        }
        if (req.apiKey !== "") {
          throw new InvalidArgumentError(
            "api_key",
            "applies to jsonl content; set it on each template",
          );
        }
        rows = (async function* () {
          // Duplicates are named in this form's terms (storage would say "line").
          const seen = new Map<string, number>();
          let line = 0;
          for (const t of req.templates) {
            line++;
            // Bytes, as for jsonl content (body.length counted UTF-16 units).
            size += Buffer.byteLength(t.body);
            const row = validateTemplate(t, line);
            if (row.customId !== null) {
              const first = seen.get(row.customId);
              if (first !== undefined) {
                throw new InvalidArgumentError(
                  `templates[${line - 1}].custom_id`,
                  `${JSON.stringify(row.customId)} is already used by templates[${first - 1}]`,
                );
              }
              seen.set(row.customId, line);
            }
            yield row;
          }
        })();
      }
      const file = await store(
        deps,
        newFile(req.filename, req.requestId, tenant),
        allowedRows(cappedRows(rows, deps.config.maxUploadLines), deps.endpointPolicy(), !hasJsonl),
        () => size,
        ctx.signal,
      );
      return create(CreateFileResponseSchema, { file: toProtoFile(file) });
    },

    async uploadFile(messages, ctx) {
      const it = messages[Symbol.asyncIterator]();
      const first = await it.next();
      if (first.done || first.value.part.case !== "header") {
        throw new InvalidArgumentError("header", "the first message must carry the header");
      }
      const file = await uploadJsonl(
        deps,
        tenantOf(principalOf(ctx)),
        first.value.part.value,
        chunksAfterHeader(it),
        ctx.signal,
      );
      return create(UploadFileResponseSchema, { file: toProtoFile(file) });
    },

    async getFile(req, ctx) {
      const file = await getFile(db, scopeOf(principalOf(ctx)), req.fileId);
      return create(GetFileResponseSchema, { file: toProtoFile(file) });
    },

    async listFiles(req, ctx) {
      const scope = scopeOf(principalOf(ctx));
      const page = await listFiles(db, scope, pageSize(req.pageSize), req.pageToken);
      return create(ListFilesResponseSchema, {
        files: page.files.map(toProtoFile),
        nextPageToken: page.nextPageToken,
      });
    },

    async deleteFile(req, ctx) {
      await deleteFile(db, scopeOf(principalOf(ctx)), req.fileId);
      return create(DeleteFileResponseSchema, {});
    },
  };
}
