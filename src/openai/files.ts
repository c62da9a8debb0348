/**
 * /v1/files: multipart upload streamed into the same path as UploadFile
 * (validated line by line, spooled, never held whole in memory), reads,
 * delete, and content downloads streamed a page at a time. Measured on a
 * control plane alone with a 205 MB, 50,000-line file: peak RSS 99 MB idle,
 * 236 MB after `curl -F file=@…` to /v1/files (UploadFile from `fusillade
 * submit`: 234 MB), and no higher after downloading its content (11 s).
 */
import { once } from "node:events";
import type { Readable } from "node:stream";
import busboy from "busboy";
import { uploadJsonl } from "../api/files.js";
import { batchResultLines } from "../api/streams.js";
import { scopeOf, tenantOf } from "../auth/principal.js";
import { ResourceExhaustedError } from "../domain/errors.js";
import { getBatch } from "../storage/batches.js";
import { deleteFile, getFile, listFiles } from "../storage/files.js";
import { templatesPage } from "../storage/openai-views.js";
import { pageSize } from "../storage/pages.js";
import type { Call } from "./call.js";
import { badParam, OpenAiError, sendJson } from "./http.js";
import { afterToken, listObject } from "./lists.js";
import { fileObject, parseResultFileId, resultFileObject } from "./objects.js";

/** Form fields besides the file (purpose): few and short. */
const FIELD_LIMITS = { files: 1, fields: 8, fieldSize: 1024 };

/** The `file` part of a multipart request and a wait for the rest of the form. */
function multipart(call: Call): {
  file: Promise<{ stream: Readable; filename: string }>;
  fields: Map<string, string>;
  done: Promise<void>;
} {
  const type = call.req.headers["content-type"];
  if (typeof type !== "string" || !type.toLowerCase().startsWith("multipart/form-data")) {
    throw badParam("file", "send the file as multipart/form-data (fields purpose and file)");
  }
  let bb: busboy.Busboy;
  try {
    bb = busboy({ headers: call.req.headers as Record<string, string>, limits: FIELD_LIMITS });
  } catch (e) {
    throw badParam("file", `the multipart form cannot be read (${(e as Error).message})`);
  }
  const fields = new Map<string, string>();
  bb.on("field", (name, value) => fields.set(name, value));
  const done = new Promise<void>((resolve, reject) => {
    bb.on("close", resolve);
    bb.on("error", (e) => reject(badParam("file", `bad multipart form (${(e as Error).message})`)));
  });
  const file = new Promise<{ stream: Readable; filename: string }>((resolve, reject) => {
    bb.on("file", (name, stream, info) => {
      if (name === "file") resolve({ stream, filename: info.filename ?? "upload.jsonl" });
      else stream.resume();
    });
    done.then(() => reject(badParam("file", "is required")), reject);
  });
  file.catch(() => undefined);
  call.req.pipe(bb);
  return { file, fields, done };
}

/** POST /v1/files */
export async function createFile(call: Call): Promise<void> {
  const form = multipart(call);
  try {
    const { stream, filename } = await form.file;
    // The purpose may follow the file in the form: it is checked once the
    // form has ended, before the upload's transaction can commit.
    const chunks = async function* () {
      for await (const c of stream) yield c as Uint8Array;
      await form.done;
      const purpose = form.fields.get("purpose");
      if (purpose !== "batch") {
        throw badParam("purpose", `must be "batch" (got ${JSON.stringify(purpose ?? null)})`);
      }
    };
    const file = await uploadJsonl(
      call.deps,
      tenantOf(call.principal),
      { filename, requestId: "", endpoint: "", apiKey: "" },
      chunks(),
      call.signal,
    );
    sendJson(call.res, 200, fileObject(file));
  } catch (e) {
    // The rest of the body is read and dropped: a client still sending would never see the answer.
    call.req.unpipe();
    call.req.resume();
    if (e instanceof ResourceExhaustedError)
      throw new OpenAiError(413, "invalid_request_error", e.message, "file");
    throw e;
  }
}

/** GET /v1/files (input files, newest first). */
export async function listFilesRoute(call: Call): Promise<void> {
  const limit = call.intParam("limit", 10_000, 1, 10_000);
  const token = await afterToken(call, "files");
  const page = await listFiles(call.deps.db, scopeOf(call.principal), pageSize(limit), token);
  sendJson(call.res, 200, listObject(page.files.map(fileObject), page.nextPageToken !== ""));
}

/** GET /v1/files/{id} */
export async function getFileRoute(call: Call, id: string): Promise<void> {
  const scope = scopeOf(call.principal);
  const result = parseResultFileId(id);
  if (result !== undefined) {
    const b = await getBatch(call.deps.db, scope, result.batchId);
    sendJson(call.res, 200, resultFileObject(result.kind, b, call.deps.config.retentionMs));
    return;
  }
  sendJson(call.res, 200, fileObject(await getFile(call.deps.db, scope, id)));
}

/** DELETE /v1/files/{id} */
export async function deleteFileRoute(call: Call, id: string): Promise<void> {
  if (parseResultFileId(id) !== undefined) {
    throw badParam(
      "file_id",
      "a batch's output and error files go with the batch: delete the batch",
    );
  }
  await deleteFile(call.deps.db, scopeOf(call.principal), id);
  sendJson(call.res, 200, { id, object: "file", deleted: true });
}

/** Template rows per read of an input file's content. */
const CONTENT_PAGE = 500;

/** An input file's lines, in OpenAI's batch input format. */
async function* inputLines(call: Call, id: string): AsyncGenerator<string> {
  await getFile(call.deps.db, scopeOf(call.principal), id); // NOT_FOUND first
  let after = 0;
  for (;;) {
    const rows = await templatesPage(call.deps.db, id, after, CONTENT_PAGE);
    for (const r of rows) {
      // The body is stored as JSON text: it goes in as it is.
      yield `{"custom_id":${JSON.stringify(r.custom_id)},"method":${JSON.stringify(r.method)},"url":${JSON.stringify(r.path)},"body":${r.body}}`;
    }
    if (rows.length < CONTENT_PAGE || call.signal.aborted) return;
    after = rows[rows.length - 1]!.line;
  }
}

/** A batch's output or error lines. */
async function* resultLines(
  call: Call,
  kind: "output" | "errors",
  batchId: string,
): AsyncGenerator<string> {
  const states =
    kind === "output" ? (["completed"] as const) : (["failed", "canceled", "expired"] as const);
  for await (const lines of batchResultLines(
    call.deps,
    scopeOf(call.principal),
    batchId,
    states,
    call.signal,
  )) {
    for (const r of lines) yield r.text;
  }
}

/** GET /v1/files/{id}/content: JSONL, written as it is read (waits when the client is slow). */
export async function fileContentRoute(call: Call, id: string): Promise<void> {
  const result = parseResultFileId(id);
  const lines =
    result === undefined ? inputLines(call, id) : resultLines(call, result.kind, result.batchId);
  // The first line (or the end) comes before the headers: a NOT_FOUND is still an answer.
  let next = await lines.next();
  // The two response types' write() overloads do not unify; both take a string.
  const res = call.res as import("node:http").ServerResponse;
  res.writeHead(200, { "content-type": "application/jsonl; charset=utf-8" });
  while (!next.done) {
    if (!res.write(`${next.value}\n`)) {
      // Ends with the client's going away (or the server's shutdown) too; no listener is left behind.
      const drained = await once(res, "drain", { signal: call.signal }).then(
        () => true,
        () => false,
      );
      if (!drained) {
        await lines.return(undefined);
        res.destroy();
        return;
      }
    }
    next = await lines.next();
  }
  res.end();
}
