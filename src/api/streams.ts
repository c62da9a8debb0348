/**
 * BatchService streaming methods: StreamBatchRequests, WatchBatch,
 * GetBatchResults.
 *
 * Every stream is driven by Postgres alone: it reads the batch row and the
 * change log, and sleeps until a `fusillade_batch` NOTIFY names its batch
 * (the requests trigger sends one in the transaction that changed it), so a
 * change written through any replica wakes subscribers on every replica.
 * Nothing is buffered per subscriber: each page is read when the previous
 * one was consumed (Connect writes honour HTTP/2 flow control), so a slow
 * client lags behind, costs no memory, and catches up from the database.
 * docs/streaming.md gives the cursor design and the argument for it. A
 * stream also ends when its credential is revoked (./stream-auth.ts).
 */
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { AuthError } from "../auth/authenticator.js";
import { principalOf, scopeOf, type TenantScope } from "../auth/principal.js";
import { InvalidArgumentError, NotFoundError, UnavailableError } from "../domain/errors.js";
import { formatResultLine, type ResultKind, resultLine } from "../domain/results.js";
import { type BatchState, isBatchTerminal, type RequestState } from "../domain/states.js";
import {
  type BatchService,
  GetBatchResultsRequest_Kind,
  type GetBatchResultsResponse,
  GetBatchResultsResponse_Kind,
  type GetBatchResultsResponse_Line,
  type StreamBatchRequestsResponse,
  StreamBatchRequestsResponse_Kind,
  StreamBatchRequestsResponseSchema,
  WatchBatchResponseSchema,
} from "../gen/fusillade/v1/batch_service_pb.js";
import { type BatchRecord, getBatch } from "../storage/batches.js";
import type { Db } from "../storage/db.js";
import {
  type ChangeRecord,
  changesPage,
  decodeStreamCursor,
  encodeStreamCursor,
  STREAM_START,
  type StreamCursor,
  snapshotPage,
} from "../storage/events.js";
import { sharesOf } from "../storage/fair-share.js";
import { BATCH_CHANNEL, type Notifications } from "../storage/notifications.js";
import { isId } from "../storage/pages.js";
import type { RequestRecord } from "../storage/requests.js";
import { type ResultPage, type ResultRow, terminalRequestsPage } from "../storage/results.js";
import { statesFilter } from "./batches.js";
import { fromDuration, toProtoBatch, toProtoBatchState, toProtoRequest } from "./convert.js";
import type { ApiDeps } from "./deps.js";
import { StreamAuthority } from "./stream-auth.js";

/** Requests per snapshot page: one short transaction each. */
const SNAPSHOT_PAGE = 500;
/** Events per change-log page. */
const CHANGES_PAGE = 500;
/** Terminal requests per results page. */
const RESULTS_PAGE = 500;
/**
 * A stream re-reads its batch this often even without a NOTIFY. Every change
 * a stream shows sends one (the requests trigger; CancelBatch and RetryBatch
 * send their own), and NOTIFYs are not lost (a LISTEN reconnect wakes
 * everyone with "*"): this is the backstop should a future change forget.
 */
const RECHECK_MS = 5_000;
/** Whether a stream that last sent at `sentAt` (epoch ms) owes a heartbeat. */
function heartbeatDue(deps: ApiDeps, sentAt: number): boolean {
  const every = deps.config.streamHeartbeatMs;
  return every > 0 && Date.now() - sentAt >= every;
}

/** How long a stream waits for a change: the recheck, or less when a heartbeat comes first. */
function nextCheckMs(deps: ApiDeps, sentAt: number): number {
  const every = deps.config.streamHeartbeatMs;
  if (every <= 0) return RECHECK_MS;
  return Math.max(1, Math.min(RECHECK_MS, sentAt + every - Date.now()));
}

/** Default and bounds of WatchBatch's min_interval. */
const WATCH_MIN_INTERVAL_DEFAULT_MS = 250;
const WATCH_MIN_INTERVAL_MAX_MS = 3_600_000;
const ALL_TERMINAL: readonly RequestState[] = ["completed", "failed", "canceled", "expired"];

/**
 * Wakes a stream when its batch changes. Subscribed before the stream's
 * first read, so a change committed between a read and the wait is not
 * missed: it leaves `dirty` set and the next wait returns at once.
 */
class BatchWakeups {
  private dirty = false;
  private wake: (() => void) | undefined;
  private readonly off: () => void;

  constructor(notifications: Notifications, batchId: string) {
    this.off = notifications.on(BATCH_CHANNEL, (payload) => {
      if (payload !== batchId && payload !== "*") return;
      this.dirty = true;
      this.wake?.();
    });
  }

  /** Forgets earlier notifications: call right before reading the batch. */
  clear(): void {
    this.dirty = false;
  }

  /** Resolves on a notification since the last clear(), after `timeoutMs`, or on abort. */
  async next(timeoutMs: number, signal: AbortSignal): Promise<void> {
    if (this.dirty || signal.aborted) return;
    const ac = new AbortController();
    const onAbort = () => ac.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    this.wake = onAbort;
    try {
      await sleep(timeoutMs, undefined, { signal: ac.signal }).catch(() => undefined);
    } finally {
      this.wake = undefined;
      signal.removeEventListener("abort", onAbort);
    }
  }

  close(): void {
    this.off();
  }
}

/**
 * How a stream ends when its signal aborts: quietly when the client went
 * away, with UNAVAILABLE when the server is shutting down, so a client
 * knows to reconnect (from its last cursor) rather than think it is done.
 */
function stopIfAborted(signal: AbortSignal, shutdownSignal: AbortSignal): boolean {
  if (shutdownSignal.aborted) {
    throw new UnavailableError(
      "the server is shutting down; reconnect (with the last cursor) to resume",
    );
  }
  return signal.aborted;
}

/** Abortable sleep: resolves early (never rejects) on abort. */
async function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0) return;
  await sleep(ms, undefined, { signal }).catch(() => undefined);
}

/**
 * The batch's state right after change `seq`. Exact for the batch's latest
 * change (the state read with it); an earlier change is one the batch moved
 * on from, so it was still running then (cancelling if cancel came first).
 */
function stateAfter(batch: BatchRecord, change: ChangeRecord): BatchState {
  if (change.seq >= Number(batch.eventSeq)) return batch.state;
  const cancelling = batch.cancellingAt !== null && batch.cancellingAt <= change.request.updatedAt;
  return cancelling ? "cancelling" : "in_progress";
}

function streamMessage(
  kind: StreamBatchRequestsResponse_Kind,
  request: RequestRecord | undefined,
  cursor: string,
  state: BatchState,
): StreamBatchRequestsResponse {
  return create(StreamBatchRequestsResponseSchema, {
    kind,
    request: request && toProtoRequest(request),
    cursor,
    batchState: toProtoBatchState(state),
  });
}

/**
 * StreamBatchRequests: snapshot pages, each preceded by the changes since
 * the previous page to the requests already sent; then the change log until
 * the batch is terminal and every change was sent.
 */
async function* streamBatchRequests(
  deps: ApiDeps,
  scope: TenantScope,
  req: { batchId: string; cursor: string; states: Parameters<typeof statesFilter>[0] },
  signal: AbortSignal,
): AsyncGenerator<StreamBatchRequestsResponse> {
  const { db } = deps;
  const batchId = req.batchId;
  const states = statesFilter(req.states);
  if (!isId(batchId)) throw new NotFoundError("batch", batchId);
  await getBatch(db, scope, batchId); // NOT_FOUND for an unknown (or another tenant's) batch
  let cur: StreamCursor =
    req.cursor === "" ? STREAM_START : decodeStreamCursor(req.cursor, batchId, states);
  const token = (c: StreamCursor) => encodeStreamCursor(c, batchId, states);
  const wake = new BatchWakeups(deps.notifications, batchId);
  try {
    // The lowest seq after which changes were read: retention may have dropped
    // events above it meanwhile (checked once the batch is terminal).
    let readAfter = Number.POSITIVE_INFINITY;
    // When the last message went out (a quiet stream owes a heartbeat).
    let sentAt = Date.now();
    // Changes with afterSeq < seq ≤ upTo (of lines ≤ maxLine), page by page.
    const changes = async function* (upTo: number, maxLine: number | null, batch: BatchRecord) {
      let after = cur.seq;
      if (after < upTo) readAfter = Math.min(readAfter, after);
      while (after < upTo) {
        const page = await changesPage(db, {
          batchId,
          afterSeq: after,
          upToSeq: upTo,
          maxLine,
          states,
          limit: CHANGES_PAGE,
          maxBytes: deps.config.maxPageBytes,
        });
        for (const ch of page.changes) {
          cur = maxLine === null ? { phase: "changes", seq: ch.seq } : { ...cur, seq: ch.seq };
          yield streamMessage(
            StreamBatchRequestsResponse_Kind.CHANGE,
            ch.request,
            token(cur),
            stateAfter(batch, ch),
          );
          sentAt = Date.now();
          if (stopIfAborted(signal, deps.shutdownSignal)) return;
        }
        const last = page.changes[page.changes.length - 1];
        after = page.more && last ? last.seq : upTo;
      }
    };
    // Changes the cursor needs were dropped by retention (docs/streaming.md,
    // "Resuming after the change log is gone"): start again from the snapshot,
    // which holds every request's final state.
    const restartIfPruned = (batch: BatchRecord, readFrom: number) => {
      if (readFrom >= Number(batch.eventsPrunedThrough)) return false;
      cur = STREAM_START;
      readAfter = Number.POSITIVE_INFINITY;
      return true;
    };

    for (;;) {
      while (cur.phase === "snapshot") {
        if (stopIfAborted(signal, deps.shutdownSignal)) return;
        const from: { seq: number; line: number } = cur;
        const page = await snapshotPage(
          db,
          batchId,
          from.line,
          states,
          SNAPSHOT_PAGE,
          deps.config.maxPageBytes,
        );
        if (!page) throw new NotFoundError("batch", batchId);
        const base = Number(page.batch.eventSeq);
        if (from.line > 0 && from.seq < base && restartIfPruned(page.batch, from.seq)) continue;
        // Bring the requests already sent up to this page's snapshot.
        if (from.line > 0) yield* changes(base, from.line, page.batch);
        if (signal.aborted) continue; // stopIfAborted above decides how to end
        for (const r of page.requests) {
          cur = { phase: "snapshot", seq: base, line: r.line };
          yield streamMessage(
            StreamBatchRequestsResponse_Kind.SNAPSHOT,
            r,
            token(cur),
            page.batch.state,
          );
          if (stopIfAborted(signal, deps.shutdownSignal)) return;
        }
        // A page cut by rows or bytes leaves cur at its last line; the next page continues there.
        if (!page.more) {
          cur = { phase: "changes", seq: base };
          yield streamMessage(
            StreamBatchRequestsResponse_Kind.SNAPSHOT_END,
            undefined,
            token(cur),
            page.batch.state,
          );
        }
      }

      sentAt = Date.now();
      for (;;) {
        if (stopIfAborted(signal, deps.shutdownSignal)) return;
        wake.clear();
        const batch = await getBatch(db, scope, batchId);
        const latest = Number(batch.eventSeq);
        if (cur.seq < latest && restartIfPruned(batch, cur.seq)) break;
        yield* changes(latest, null, batch);
        if (signal.aborted) continue;
        cur = { phase: "changes", seq: Math.max(cur.seq, latest) };
        if (isBatchTerminal(batch.state)) {
          // Events read may have been dropped while they were read: then send it all again.
          if (restartIfPruned(await getBatch(db, scope, batchId), readAfter)) break;
          return;
        }
        if (heartbeatDue(deps, sentAt)) {
          sentAt = Date.now();
          const kind = StreamBatchRequestsResponse_Kind.HEARTBEAT;
          yield streamMessage(kind, undefined, token(cur), batch.state);
        }
        await wake.next(nextCheckMs(deps, sentAt), signal);
      }
    }
  } finally {
    wake.close();
  }
}

/**
 * WatchBatch: the batch at once, then whenever it changed, at most one
 * message per min_interval; ends after the message with a terminal state.
 */
async function* watchBatch(
  deps: ApiDeps,
  scope: TenantScope,
  req: { batchId: string; minInterval?: Parameters<typeof fromDuration>[0] },
  signal: AbortSignal,
) {
  const minInterval = fromDuration(req.minInterval) ?? WATCH_MIN_INTERVAL_DEFAULT_MS;
  if (minInterval < 0 || minInterval > WATCH_MIN_INTERVAL_MAX_MS) {
    throw new InvalidArgumentError("min_interval", "must be between 0 and 1h");
  }
  const wake = new BatchWakeups(deps.notifications, req.batchId);
  try {
    let lastKey = "";
    let lastSent = 0;
    for (;;) {
      if (stopIfAborted(signal, deps.shutdownSignal)) return;
      wake.clear();
      const b = await getBatch(deps.db, scope, req.batchId);
      // updated_at moves with every counter change, cancel and retry.
      const key = `${b.eventSeq}/${b.updatedAt.getTime()}/${b.state}`;
      if (key !== lastKey || heartbeatDue(deps, lastSent)) {
        lastKey = key;
        lastSent = Date.now();
        const shares = await sharesOf(deps.db, b, deps.config.defaultLimit);
        yield create(WatchBatchResponseSchema, {
          batch: toProtoBatch(b, deps.config.retentionMs, shares),
        });
      }
      if (isBatchTerminal(b.state)) return;
      await wake.next(nextCheckMs(deps, lastSent), signal);
      // Coalesce: changes during the pause are read as one.
      await pause(lastSent + minInterval - Date.now(), signal);
    }
  } finally {
    wake.close();
  }
}

const RESULT_STATES: Record<GetBatchResultsRequest_Kind, readonly RequestState[]> = {
  [GetBatchResultsRequest_Kind.UNSPECIFIED]: ALL_TERMINAL,
  [GetBatchResultsRequest_Kind.ALL]: ALL_TERMINAL,
  [GetBatchResultsRequest_Kind.OUTPUT]: ["completed"],
  [GetBatchResultsRequest_Kind.ERRORS]: ["failed", "canceled", "expired"],
};

/** A result line of GetBatchResults and of the OpenAI files. */
export interface ResultLineText {
  kind: ResultKind;
  text: string;
  customId: string | null;
}

/** The lines of a page of terminal requests (each is terminal: each makes a line). */
function pageLines(rows: readonly ResultRow[]): ResultLineText[] {
  const out: ResultLineText[] = [];
  for (const r of rows) {
    const res = resultLine({
      id: r.id,
      customId: r.custom_id,
      state: r.state,
      responseStatus: r.response_status,
      responseHeaders: r.response_headers,
      responseBody: r.response_body,
      errorCode: r.error_code,
      errorMessage: r.error_message,
    });
    if (res) out.push({ kind: res.kind, text: formatResultLine(res.line), customId: r.custom_id });
  }
  return out;
}

/**
 * The result lines of a batch's requests in `states` (terminal ones) so far,
 * in line order, a page of lines at a time: GetBatchResults, and the output
 * and error files of the OpenAI-compatible API. NOT_FOUND for a batch `scope`
 * may not see.
 *
 * Pages are capped by bytes as well as rows, so memory follows a page, not
 * the batch, whatever the bodies. A page that holds at most half the cap is
 * followed by the next one read while its lines are made and sent: Postgres
 * works while this thread does (20,000 lines of 1 KiB bodies: a third of
 * the time went waiting for pages; bench reads). A larger page is not, so a
 * reader holds at most a page and a half of the cap, or one row above it.
 */
export async function* batchResultLines(
  deps: Pick<ApiDeps, "shutdownSignal" | "config"> & { db: Pick<Db, "query" | "tx"> },
  scope: TenantScope,
  batchId: string,
  states: readonly RequestState[],
  signal: AbortSignal,
): AsyncGenerator<ResultLineText[]> {
  await getBatch(deps.db, scope, batchId); // NOT_FOUND for an unknown batch
  const cap = deps.config.maxPageBytes;
  const read = (after: number) =>
    terminalRequestsPage(deps.db, batchId, states, after, RESULTS_PAGE, cap);
  let page: ResultPage = await read(0);
  for (;;) {
    // A page cut short by bytes is not the end: only `more` says so.
    const last = page.rows[page.rows.length - 1];
    const next = page.more && last !== undefined ? last.line : undefined;
    const ahead = next !== undefined && page.bytes <= cap / 2 ? read(next) : undefined;
    // Handled now: it may fail while the reader is slow, or be left when it goes away.
    ahead?.catch(() => undefined);
    yield pageLines(page.rows);
    if (next === undefined || stopIfAborted(signal, deps.shutdownSignal)) return;
    page = await (ahead ?? read(next));
  }
}

/** Most lines in one GetBatchResults answer (lines_per_message above it is taken as this). */
export const MAX_RESULT_LINES_PER_MESSAGE = 1000;
/** An answer of several lines ends once its lines' text passes this many characters. */
const RESULT_MESSAGE_CHARS = 1024 * 1024;

/**
 * GetBatchResults: a line per request terminal so far, in line order, a page
 * at a time; `linesPerMessage` lines an answer (0 or 1: one, in the answer's
 * own fields).
 */
async function* getBatchResults(
  deps: ApiDeps,
  scope: TenantScope,
  req: { batchId: string; kind: GetBatchResultsRequest_Kind; linesPerMessage: number },
  signal: AbortSignal,
): AsyncGenerator<GetBatchResultsResponse> {
  const states = RESULT_STATES[req.kind];
  if (states === undefined) {
    await getBatch(deps.db, scope, req.batchId); // NOT_FOUND first, as before
    throw new InvalidArgumentError("kind", `unknown kind ${req.kind}`);
  }
  const perMessage = Math.min(req.linesPerMessage, MAX_RESULT_LINES_PER_MESSAGE);
  const kindOf = (r: { kind: string }) =>
    r.kind === "output" ? GetBatchResultsResponse_Kind.OUTPUT : GetBatchResultsResponse_Kind.ERROR;
  // Literal messages: create() walks the schema for every field of every line.
  let pack: GetBatchResultsResponse_Line[] = [];
  let packChars = 0;
  const packed = (): GetBatchResultsResponse => {
    const message: GetBatchResultsResponse = {
      $typeName: "fusillade.v1.GetBatchResultsResponse",
      kind: GetBatchResultsResponse_Kind.UNSPECIFIED,
      line: "",
      customId: "",
      lines: pack,
    };
    pack = [];
    packChars = 0;
    return message;
  };
  for await (const lines of batchResultLines(deps, scope, req.batchId, states, signal)) {
    for (const r of lines) {
      if (perMessage <= 1) {
        yield {
          $typeName: "fusillade.v1.GetBatchResultsResponse",
          kind: kindOf(r),
          line: r.text,
          customId: r.customId ?? "",
          lines: [],
        };
        continue;
      }
      pack.push({
        $typeName: "fusillade.v1.GetBatchResultsResponse.Line",
        kind: kindOf(r),
        line: r.text,
        customId: r.customId ?? "",
      });
      packChars += r.text.length;
      if (pack.length >= perMessage || packChars >= RESULT_MESSAGE_CHARS) yield packed();
    }
    // A page's lines go out before the next page is awaited (a batch still running
    // may not have more for a while).
    if (pack.length > 0) yield packed();
  }
}

/** `stream`, counted in the subscriber gauge while it is open. */
async function* counted<T>(
  deps: ApiDeps,
  kind: "watch" | "requests",
  stream: AsyncGenerator<T>,
): AsyncGenerator<T> {
  const done = deps.metrics?.subscribed(kind);
  try {
    yield* stream;
  } finally {
    done?.();
  }
}

/**
 * The stream `open(signal)` makes, ended with UNAUTHENTICATED (or
 * PERMISSION_DENIED) once the call's credential stops being valid while it
 * runs: `signal` aborts then, and the stream stops as it does when the
 * client goes away.
 */
async function* authorized<T>(
  authority: StreamAuthority,
  ctx: HandlerContext,
  open: (signal: AbortSignal) => AsyncGenerator<T>,
): AsyncGenerator<T> {
  const grant = authority.open(ctx);
  try {
    yield* open(AbortSignal.any([ctx.signal, grant.signal]));
    const reason: unknown = grant.signal.reason;
    if (grant.signal.aborted && reason instanceof AuthError) {
      throw new ConnectError(
        `this stream's credential is no longer accepted: ${reason.message}`,
        reason.kind === "unauthenticated" ? Code.Unauthenticated : Code.PermissionDenied,
      );
    }
  } finally {
    grant.close();
  }
}

/** The streaming methods of BatchService. */
export function streamMethods(
  deps: ApiDeps,
): Pick<
  ServiceImpl<typeof BatchService>,
  "streamBatchRequests" | "watchBatch" | "getBatchResults"
> {
  const authority = new StreamAuthority(
    deps.authenticate,
    deps.notifications,
    deps.config.streamReauthIntervalMs,
  );
  return {
    streamBatchRequests: (req, ctx) =>
      counted(
        deps,
        "requests",
        authorized(authority, ctx, (signal) =>
          streamBatchRequests(deps, scopeOf(principalOf(ctx)), req, signal),
        ),
      ),
    watchBatch: (req, ctx) =>
      counted(
        deps,
        "watch",
        authorized(authority, ctx, (signal) =>
          watchBatch(deps, scopeOf(principalOf(ctx)), req, signal),
        ),
      ),
    // A slow reader of a large batch can keep this one open for long too.
    getBatchResults: (req, ctx) =>
      authorized(authority, ctx, (signal) =>
        getBatchResults(deps, scopeOf(principalOf(ctx)), req, signal),
      ),
  };
}
