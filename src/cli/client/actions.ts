/**
 * What each client command does, given a connection and parsed flags.
 * Human output goes to stdout, progress and notes to stderr; with --json
 * stdout carries exactly one JSON document (or JSONL results).
 */

import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Batch } from "../../gen/fusillade/v1/resources_pb.js";
import { CliError, type Connection } from "./connection.js";
import { followBatch } from "./progress.js";
import { requestStateName } from "./requests.js";
import { downloadResults, type ResultTargets } from "./results.js";
import { type SubmitInput, startBatch, uploadFile } from "./submit.js";
import {
  batchCountsLine,
  batchText,
  batchView,
  countsView,
  fileView,
  formatBytes,
  formatDuration,
  isTerminal,
  plural,
  print,
  printJson,
  stateName,
  table,
} from "./views.js";

/** Flags every client command sees. */
export interface Globals {
  server: string;
  token?: string;
  ca?: string;
  json: boolean;
}

/** How a watch is shown. */
export interface WatchFlags {
  /** Plain-mode line interval, in ms. */
  intervalMs: number;
  /** How long to keep reconnecting to a server that went away, in ms. */
  reconnectForMs?: number;
}

/** A line on stderr (stdout stays for results and --json). */
export function note(text: string): void {
  process.stderr.write(`${text}\n`);
}

/** Runs `fn` with a signal that aborts on Ctrl-C (the first one; a second kills as usual). */
async function interruptible<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const onInt = () => ac.abort();
  process.once("SIGINT", onInt);
  try {
    return await fn(ac.signal);
  } finally {
    process.off("SIGINT", onInt);
  }
}

async function follow(
  conn: Connection,
  batchId: string,
  flags: WatchFlags,
  resultsHint?: ResultTargets,
): Promise<Batch> {
  return interruptible((signal) =>
    followBatch(conn, batchId, {
      tty: process.stderr.isTTY === true,
      stream: process.stderr,
      plainEveryMs: flags.intervalMs,
      signal,
      resultsHint,
      reconnectForMs: flags.reconnectForMs,
    }),
  );
}

function elapsed(b: Batch): string {
  if (!b.createTime || !b.finishTime) return "";
  const s = (timestampDate(b.finishTime).getTime() - timestampDate(b.createTime).getTime()) / 1000;
  return ` in ${formatDuration(s)}`;
}

function finishedLine(b: Batch): string {
  return `batch ${b.id} ${stateName(b.state)}: ${batchCountsLine(b)}${elapsed(b)}`;
}

/** submit FILE: upload, start, and with --watch follow and download. */
export async function submitAction(
  conn: Connection,
  g: Globals,
  input: SubmitInput,
  opts: { watch: boolean; targets: ResultTargets } & WatchFlags,
): Promise<void> {
  const file = await uploadFile(conn, input);
  const batch = await startBatch(conn, file.id, input);
  const created = {
    batch_id: batch.id,
    file_id: file.id,
    filename: file.filename,
    requests: Number(file.templateCount),
    size_bytes: Number(file.sizeBytes),
    models: file.models,
    state: stateName(batch.state),
    openai_status: batch.openaiStatus,
    priority: batch.priority,
  };
  const createdLine = `batch ${batch.id} created from ${file.filename}: ${file.templateCount} requests, ${formatBytes(Number(file.sizeBytes))} (file ${file.id})`;
  if (!opts.watch) {
    if (g.json) printJson(created);
    else print(`${createdLine}\nfollow it with: fusillade watch ${batch.id}`);
    return;
  }
  note(createdLine);
  const final = await follow(conn, batch.id, opts, opts.targets);
  const wants = opts.targets.output !== undefined || opts.targets.errors !== undefined;
  const written = wants ? await downloadResults(conn, batch.id, opts.targets) : undefined;
  if (g.json) {
    printJson({
      ...created,
      state: stateName(final.state),
      openai_status: final.openaiStatus,
      counts: countsView(final.counts),
      output_file: opts.targets.output ?? null,
      errors_file: opts.targets.errors ?? null,
      output_lines: written?.output ?? null,
      error_lines: written?.errors ?? null,
    });
    return;
  }
  print(finishedLine(final));
  if (written) print(writtenLine(written, opts.targets));
  else print(`results: fusillade results ${batch.id} --output output.jsonl --errors errors.jsonl`);
}

function writtenLine(w: { output: number; errors: number }, t: ResultTargets): string {
  const where = (path: string | undefined) => path ?? "stdout";
  if (t.errorsOnly) return `wrote ${w.errors} error lines to ${where(t.errors)}`;
  return `wrote ${w.output} output lines to ${where(t.output)} and ${w.errors} error lines to ${where(t.errors)}`;
}

/** watch BATCH: progress until the batch is terminal; with --output/--errors, then its results. */
export async function watchAction(
  conn: Connection,
  g: Globals,
  batchId: string,
  flags: WatchFlags & { targets: ResultTargets },
): Promise<void> {
  const final = await follow(conn, batchId, flags, flags.targets);
  const wants = flags.targets.output !== undefined || flags.targets.errors !== undefined;
  const written = wants ? await downloadResults(conn, batchId, flags.targets) : undefined;
  if (g.json) {
    printJson({
      ...batchView(final),
      ...(written && {
        output_file: flags.targets.output ?? null,
        errors_file: flags.targets.errors ?? null,
        output_lines: written.output,
        error_lines: written.errors,
      }),
    });
    return;
  }
  print(finishedLine(final));
  if (written) print(writtenLine(written, flags.targets));
}

/** results BATCH: output and error lines, to files or stdout. */
export async function resultsAction(
  conn: Connection,
  g: Globals,
  batchId: string,
  targets: ResultTargets,
): Promise<void> {
  const { batch } = await conn.batch.getBatch({ batchId });
  if (!isTerminal(batch!.state)) {
    note(`note: batch ${batchId} is ${stateName(batch!.state)}; these are the results so far`);
  }
  const written = await downloadResults(conn, batchId, targets);
  const anyFile = targets.output !== undefined || targets.errors !== undefined;
  const allFiles =
    (targets.output !== undefined || targets.errorsOnly === true) && targets.errors !== undefined;
  if (g.json && allFiles) {
    printJson({
      batch_id: batchId,
      output_file: targets.output ?? null,
      errors_file: targets.errors,
      output_lines: written.output,
      error_lines: written.errors,
    });
  } else if (anyFile) {
    note(writtenLine(written, targets));
  } else if (targets.errorsOnly === true && written.errors === 0) {
    note(`no error lines: no request of batch ${batchId} failed, expired or was cancelled`);
  } else if (written.output + written.errors === 0) {
    note(`no result lines: no request of batch ${batchId} has finished yet`);
  }
}

/** status BATCH. */
export async function statusAction(conn: Connection, g: Globals, batchId: string): Promise<void> {
  const { batch } = await conn.batch.getBatch({ batchId });
  if (g.json) printJson(batchView(batch!));
  else print(batchText(batch!));
}

/** cancel BATCH. */
export async function cancelAction(conn: Connection, g: Globals, batchId: string): Promise<void> {
  const { batch } = await conn.batch.cancelBatch({ batchId });
  if (g.json) printJson(batchView(batch!));
  else print(`batch ${batch!.id} ${stateName(batch!.state)}: ${batchCountsLine(batch!)}`);
}

/** What `retry` and `resume` ask to run again. */
export interface RetrySelection {
  customIds: string[];
  requestIds: string[];
  completionWindow: string | undefined;
  resume: boolean;
}

/** retry BATCH (and resume BATCH): requests back to pending, and the window change. */
export async function retryAction(
  conn: Connection,
  g: Globals,
  batchId: string,
  sel: RetrySelection,
): Promise<void> {
  const res = await conn.batch.retryBatch({
    batchId,
    customIds: sel.customIds,
    requestIds: sel.requestIds,
    completionWindow: sel.completionWindow ?? "",
    resume: sel.resume,
  });
  const b = res.batch!;
  const named = sel.customIds.length + sel.requestIds.length > 0;
  if (res.retriedCount === 0n && named) await explainNothingRetried(conn, b.id, sel);
  if (g.json) return printJson({ retried_count: Number(res.retriedCount), batch: batchView(b) });
  const expires = b.expireTime ? timestampDate(b.expireTime).toISOString() : "?";
  const what = sel.resume ? "cancelled, failed or expired" : "failed or expired";
  const head =
    res.retriedCount === 0n
      ? `nothing to run again: no request is ${what}`
      : `${sel.resume ? "resumed" : "retried"} ${plural(res.retriedCount, "request")}`;
  const window =
    sel.completionWindow === undefined ? "" : ` (completion window ${sel.completionWindow})`;
  print(`${head}; batch ${b.id} is ${stateName(b.state)}, expires ${expires}${window}`);
  if (res.retriedCount > 0n && !isTerminal(b.state))
    print(`follow it with: fusillade watch ${b.id}`);
}

/**
 * Named requests of which none could run again: an error (exit 1) that
 * says the state of each, like `gh run rerun` of a run that succeeded.
 */
async function explainNothingRetried(
  conn: Connection,
  batchId: string,
  sel: RetrySelection,
): Promise<never> {
  const keys = [
    ...sel.customIds.map((customId) => ({ name: customId, key: { batchId, customId } })),
    ...sel.requestIds.map((requestId) => ({ name: requestId, key: { requestId } })),
  ];
  const states = await Promise.all(
    keys.slice(0, 10).map(async ({ name, key }) => {
      const r = await conn.batch.getRequest(key);
      return `${name} is ${requestStateName(r.request!.state)}`;
    }),
  );
  const more = keys.length > 10 ? `, and ${keys.length - 10} more` : "";
  const what = sel.resume ? "cancelled, failed or expired" : "failed or expired";
  throw new CliError(
    `nothing to run again: ${states.join(", ")}${more} (only ${what} requests run again)`,
    1,
  );
}

/** Pages through a list until `limit` items; returns them and the token for more. */
/** Pages through a listing until `limit` items or its end. */
export async function collect<T>(
  limit: number,
  pageToken: string,
  page: (size: number, token: string) => Promise<{ items: T[]; next: string }>,
): Promise<{ items: T[]; next: string }> {
  const items: T[] = [];
  let token = pageToken;
  do {
    const res = await page(Math.min(1000, limit - items.length), token);
    items.push(...res.items);
    token = res.next;
  } while (token !== "" && items.length < limit);
  return { items, next: token };
}

/** On stderr: how to list the next page. */
export function moreNote(next: string, command: string): void {
  if (next !== "") note(`more: fusillade ${command} --page-token ${next}`);
}

export async function filesListAction(
  conn: Connection,
  g: Globals,
  o: { limit: number; pageToken: string },
): Promise<void> {
  const { items, next } = await collect(o.limit, o.pageToken, async (pageSize, pageToken) => {
    const r = await conn.batch.listFiles({ pageSize, pageToken });
    return { items: r.files, next: r.nextPageToken };
  });
  if (g.json) return printJson({ files: items.map(fileView), next_page_token: next });
  const rows = items
    .map(fileView)
    .map((f) => [
      f.id,
      f.filename,
      String(f.template_count),
      formatBytes(f.size_bytes),
      f.models.join(","),
      f.create_time ?? "",
    ]);
  print(table(["ID", "FILENAME", "REQUESTS", "SIZE", "MODELS", "CREATED"], rows));
  moreNote(next, "files list");
}

export async function filesGetAction(conn: Connection, g: Globals, fileId: string): Promise<void> {
  const { file } = await conn.batch.getFile({ fileId });
  const f = fileView(file!);
  if (g.json) return printJson(f);
  print(
    `file ${f.id}\n  filename   ${f.filename}\n  requests   ${f.template_count}\n  size       ${formatBytes(f.size_bytes)}\n  models     ${f.models.join(", ")}\n  created    ${f.create_time}`,
  );
}

export async function filesDeleteAction(
  conn: Connection,
  g: Globals,
  fileId: string,
): Promise<void> {
  await conn.batch.deleteFile({ fileId });
  if (g.json) printJson({ id: fileId, deleted: true });
  else print(`file ${fileId} deleted`);
}

export async function batchesDeleteAction(
  conn: Connection,
  g: Globals,
  batchId: string,
): Promise<void> {
  await conn.batch.deleteBatch({ batchId });
  if (g.json) printJson({ id: batchId, deleted: true });
  else print(`batch ${batchId} deleted, with its requests and results`);
}

export async function batchesListAction(
  conn: Connection,
  g: Globals,
  o: { limit: number; pageToken: string; file?: string },
): Promise<void> {
  const { items, next } = await collect(o.limit, o.pageToken, async (pageSize, pageToken) => {
    const r = await conn.batch.listBatches({ pageSize, pageToken, fileId: o.file ?? "" });
    return { items: r.batches, next: r.nextPageToken };
  });
  const names = await fileNames(
    conn,
    items.map((b) => b.fileId),
  );
  if (g.json) {
    return printJson({
      batches: items.map((b) => ({ ...batchView(b), filename: names.get(b.fileId) ?? null })),
      next_page_token: next,
    });
  }
  const rows = items.map(batchView).map((b) => [
    b.id,
    b.state,
    String(b.counts.total),
    String(b.counts.completed),
    String(b.counts.failed),
    String(b.counts.canceled),
    String(b.counts.expired),
    names.get(b.file_id) ?? (b.file_id === "" ? "(deleted)" : b.file_id),
    Object.entries(b.metadata)
      .map(([k, v]) => `${k}=${v}`)
      .join(" "),
    b.create_time ?? "",
  ]);
  print(
    table(
      [
        "ID",
        "STATE",
        "TOTAL",
        "OK",
        "FAILED",
        "CANCELLED",
        "EXPIRED",
        "FILE",
        "METADATA",
        "CREATED",
      ],
      rows,
    ),
  );
  moreNote(next, "batches list");
}

/** File names by id (one GetFile per distinct file; a deleted file has none). */
async function fileNames(conn: Connection, ids: string[]): Promise<Map<string, string>> {
  const names = new Map<string, string>();
  for (const id of new Set(ids)) {
    if (id === "") continue;
    const res = await conn.batch.getFile({ fileId: id }).catch(() => undefined);
    if (res?.file) names.set(id, res.file.filename);
  }
  return names;
}
