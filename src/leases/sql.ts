/**
 * Named SQL of the slot and claim paths (docs/capacity-leases.md). The claim's
 * two statements are prepared per connection (their planning took longer than
 * their execution: ~5 ms of a 9 ms claim). Each statement updates `requests` at most
 * once per transaction, so the trigger's batch locks are the last locks a
 * transaction takes (lock order: model_limits row → requests → batches).
 */

import type { Prepared } from "../storage/db.js";
import { batchClaimsOf } from "../storage/fair-share.js";

/**
 * SlotGrantSync: one dispatcher's grant of one model: check the token, cut to
 * keep, grow toward the fair share (see fusillade_slots in the migration).
 * Params: model, holder, token (0 = new), keep, want, ttl ms, default limit.
 * Result: token, slots, target, lost. Locks the model's limit row.
 */
export const SLOTS_SYNC = `SELECT * FROM fusillade_slots($1, $2, $3, $4, $5, $6, $7)`;

/**
 * PacingViewSet: what a grant's holder says of its pacing (docs/pacing.md,
 * "What is visible where"). Params: model, holder, view (json text).
 */
export const PACING_VIEW_SET = `
  UPDATE slot_grants SET pacing = $3::jsonb WHERE model = $1 AND holder = $2`;

/**
 * RateShareSync: one dispatcher's share of one model's rates, renewed with
 * its grant (see fusillade_rates in the rate-acks migration). Params: model,
 * holder, slot want, rate want, token want, ttl ms, rpm held, tpm held (null:
 * not said). Result: rpm, tpm (null: no such rate). Locks the model's limit row.
 */
export const RATES_SYNC = `SELECT * FROM fusillade_rates($1, $2, $3, $4, $5, $6, $7, $8)`;

/** RateSharesDeleteSpent: shares neither live nor counted any more (this only tidies). */
export const RATE_SHARES_DELETE_SPENT = `
  DELETE FROM rate_shares WHERE expires_at < now() - interval '1 minute'
    AND (rpm_counted_until IS NULL OR rpm_counted_until < now())
    AND (tpm_counted_until IS NULL OR tpm_counted_until < now())`;

/**
 * ClaimCandidates: per model ($1), the batches that may get its next claims
 * (docs/fair-share.md): every running batch (cancel not asked, window open)
 * with a ready pending request of the model or with claims of it, its tenant,
 * the tenant's weight (1 without a row), its priority and its current claims.
 * Reads the unfinished batches (batches_unfinished_expiry), one index probe
 * per batch and model of its file (requests_pending_batch), and the claims
 * from the batch counters (batchClaimsOf: leased rows only for batches of
 * several models, and none when one batch runs): never the backlog. A model
 * on a 429 hold has none.
 */
export const CLAIM_CANDIDATES: Prepared = {
  name: "fusillade_claim_candidates",
  text: `
  WITH live AS (
    -- The file's models (null once the file is deleted: then every model is probed).
    SELECT b.id, b.tenant, b.priority, b.created_at, b.leased_count,
      coalesce(t.weight, 1) AS weight, f.models
    FROM batches b LEFT JOIN tenants t ON t.name = b.tenant LEFT JOIN files f ON f.id = b.file_id
    WHERE b.finished_at IS NULL AND b.cancelling_at IS NULL AND b.expires_at > now()
  ), c AS MATERIALIZED (
    -- MATERIALIZED: each probe below runs once per batch and model (inlined, the
    -- filter and the select list each ran them).
    SELECT w.model, l.id AS batch_id, l.tenant, l.priority, l.weight,
      extract(epoch FROM l.created_at) * 1000 AS created_ms,
      -- A lone running batch takes every claim whatever its own (allocateClaims):
      -- its leased rows of a model are not counted.
      CASE WHEN (SELECT count(*) FROM live) = 1 THEN 0
        ELSE ${batchClaimsOf("l", "l.models", "w.model")} END AS claims,
      -- ORDER BY … LIMIT 1 rather than EXISTS: it keeps the planner on the
      -- index (an EXISTS was planned as a sequential scan expecting an early hit).
      (SELECT true FROM requests r
        WHERE r.model = w.model AND r.batch_id = l.id AND r.state = 'pending'
          AND (r.not_before IS NULL OR r.not_before <= now())
        ORDER BY r.created_at, r.line LIMIT 1) IS NOT NULL AS ready
    FROM unnest($1::text[]) AS w(model) CROSS JOIN live l
    WHERE (l.models IS NULL OR w.model = ANY(l.models)) AND NOT EXISTS (
      SELECT 1 FROM model_limits m WHERE m.model = w.model AND m.hold_until > now())
  )
  SELECT * FROM c WHERE ready OR claims > 0`,
};

/**
 * RequestsClaim: for each (model $1[i], batch $2[i]), up to $3[i] of the
 * batch's ready pending requests of the model, oldest first, claimed by
 * holder $4 for $5 ms (byte cap $6[i], the same for each row of a model); none of a cancelled batch, of one past its window or
 * of a model on a 429 hold. Claims do not count against the limit (slots do).
 * Uses requests_pending_batch (model, batch_id, created_at, line).
 * A model's claims stop once their bodies reach its byte cap (the first is always
 * taken), each batch's first claims before any batch's later ones: an answer
 * never grows with the room alone. Rows picked but left over stay pending
 * (their locks end with the statement).
 */
export const REQUESTS_CLAIM: Prepared = {
  name: "fusillade_requests_claim",
  text: `
  WITH picked AS (
    SELECT p.id, a.model, a.batch_id, p.len, a.cap,
      row_number() OVER (PARTITION BY a.model, a.batch_id ORDER BY p.created_at, p.line) AS k
    FROM unnest($1::text[], $2::uuid[], $3::int[], $6::bigint[]) AS a(model, batch_id, n, cap)
    JOIN batches b ON b.id = a.batch_id AND b.cancelling_at IS NULL AND b.expires_at > now()
    CROSS JOIN LATERAL (
      SELECT r.id, r.created_at, r.line, octet_length(r.body) AS len
      FROM requests r
      WHERE r.model = a.model AND r.batch_id = a.batch_id AND r.state = 'pending'
        AND (r.not_before IS NULL OR r.not_before <= now())
      ORDER BY r.created_at, r.line
      LIMIT a.n
      FOR UPDATE OF r SKIP LOCKED
    ) p
    WHERE a.n > 0 AND NOT EXISTS (
      SELECT 1 FROM model_limits m WHERE m.model = a.model AND m.hold_until > now())
  ), capped AS (
    SELECT id FROM (
      SELECT id, cap, sum(len) OVER (PARTITION BY model ORDER BY k, batch_id, id) - len AS before
      FROM picked
    ) c
    WHERE before < cap
  )
  UPDATE requests r SET
    state = 'leased', attempt = r.attempt + 1, not_before = NULL,
    lease_token = nextval('lease_token_seq'), lease_holder = $4,
    lease_expires_at = now() + $5 * interval '1 millisecond', updated_at = now()
  FROM capped WHERE r.id = capped.id
  RETURNING r.id, r.batch_id, r.custom_id, r.model, r.attempt, r.method, r.endpoint, r.path,
    r.body, r.api_key_id, r.lease_token, octet_length(r.body) AS len`,
};

/**
 * WorkCheck: for each model (only $1 when not empty), whether a dispatcher has
 * work to take now: a ready pending request of a running batch, no 429 hold,
 * and the model is one it is hungry for ($2), one it may grow on ($3) with
 * slots free, or one it holds no grant of ($4 = known) while it may take new
 * models ($5). $6: the default limit. Also the next moment that could change the answer without a
 * notification: a retry's not_before, a hold's end, a grant's expiry. One
 * statement, one now(): a moment that passes while we look is either ready
 * or still ahead, never missed. Result: model, go, wake_ms (null = none).
 */
export const WORK_CHECK = `
  WITH m AS (
    SELECT l.model, coalesce(l.max_in_flight, $6) AS lim,
      CASE WHEN l.hold_until > now() THEN l.hold_until END AS hold_until
    FROM model_limits l
    WHERE cardinality($1::text[]) = 0 OR l.model = ANY($1::text[])
  ), f AS (
    SELECT m.*,
      (
        -- A short scan: one ready request is enough. In the index's order
        -- (requests_pending_batch): an EXISTS was planned as a sequential scan.
        SELECT true FROM requests r JOIN batches b ON b.id = r.batch_id
        WHERE r.model = m.model AND r.state = 'pending'
          AND (r.not_before IS NULL OR r.not_before <= now())
          AND b.cancelling_at IS NULL AND b.expires_at > now()
        ORDER BY r.model, r.batch_id, r.created_at, r.line
        LIMIT 1) IS NOT NULL AS ready,
      (SELECT coalesce(sum(s.slots), 0) FROM slot_grants s
        WHERE s.model = m.model AND s.expires_at > now()) AS granted,
      (SELECT min(r.not_before) FROM requests r
        WHERE r.model = m.model AND r.state = 'pending' AND r.not_before > now()) AS next_retry,
      (SELECT min(s.expires_at) FROM slot_grants s
        WHERE s.model = m.model AND s.expires_at > now()) AS next_expiry
    FROM m
  )
  SELECT f.model,
    f.ready AND f.hold_until IS NULL AND (
      f.model = ANY($2::text[])
      OR (f.model = ANY($3::text[]) AND f.granted < f.lim)
      OR ($5::boolean AND NOT f.model = ANY($4::text[]))) AS go,
    extract(epoch FROM (least(f.next_retry, f.hold_until, f.next_expiry) - now())) * 1000 AS wake_ms
  FROM f`;

/** ModelHolds: models among $1 on a 429 hold, with ms left. */
export const MODEL_HOLDS = `
  SELECT model, extract(epoch FROM (hold_until - now())) * 1000 AS ms
  FROM model_limits WHERE model = ANY($1::text[]) AND hold_until > now()`;

/** SlotGrantsDeleteExpired: grants past their expiry (they count no more; this only tidies). */
export const SLOT_GRANTS_DELETE_EXPIRED = `DELETE FROM slot_grants WHERE expires_at < now()`;

/**
 * The state a request leaves a lease for when its batch was cancelled or
 * ran out of time; otherwise $fallback. Used by release, retry and reap.
 */
const unlessBatchEnded = (fallback: string) => `CASE
    WHEN b.cancelling_at IS NOT NULL THEN 'canceled'
    WHEN b.expires_at <= now() THEN 'expired'
    ELSE ${fallback} END`;

/**
 * Error columns for a request that ended with its batch. An expired one
 * keeps its last attempt's error in the message (`lastError`, null for
 * none): a request that met 429s until the window closed says so.
 */
const endedError = (
  state: string,
  fallbackCode: string,
  fallbackMessage: string,
  lastError = "NULL",
) => `
    error_code = CASE ${state}
      WHEN 'canceled' THEN 'batch_cancelled' WHEN 'expired' THEN 'batch_expired'
      ELSE ${fallbackCode} END,
    error_message = CASE ${state}
      WHEN 'canceled' THEN 'the batch was cancelled before this request finished'
      WHEN 'expired' THEN 'the batch''s completion window closed before this request finished'
        || coalesce(' (last attempt: ' || ${lastError} || ')', '')
      ELSE ${fallbackMessage} END`;

/**
 * RequestsReapExpiredLeases: leases past their expiry go back to pending
 * (the attempt stays counted), or fail when the attempts are used up, or
 * end with their batch. Params: model (null = all). Uses requests_leased_batch.
 */
export const REQUESTS_REAP_EXPIRED = `
  WITH dead AS (
    SELECT r.id,
      ${unlessBatchEnded("CASE WHEN r.attempt - r.throttled_attempts > b.max_retries THEN 'failed' ELSE 'pending' END")} AS next
    FROM requests r JOIN batches b ON b.id = r.batch_id
    WHERE r.state = 'leased' AND r.lease_expires_at < now()
      AND ($1::text IS NULL OR r.model = $1)
    FOR UPDATE OF r SKIP LOCKED
  )
  UPDATE requests r SET
    state = dead.next, lease_holder = NULL, lease_expires_at = NULL, updated_at = now(),
    finished_at = CASE WHEN dead.next = 'pending' THEN NULL ELSE now() END,
    response_status = NULL, response_headers = NULL, response_body = NULL,
    ${endedError("dead.next", "'lease_expired'", "'the dispatcher holding this request stopped renewing its lease (' || r.attempt || ' attempts)'", "r.error_message")}
  FROM dead WHERE r.id = dead.id
  RETURNING r.id`;

/**
 * RequestsEndWithBatch: pending requests of batches that were cancelled or
 * whose window closed. Catches requests sent back to pending by a report
 * that raced a cancel. Params: none. Result: ids.
 */
export const REQUESTS_END_WITH_BATCH = `
  WITH ended AS (
    SELECT r.id, ${unlessBatchEnded("NULL")} AS next
    FROM batches b JOIN requests r ON r.batch_id = b.id AND r.state = 'pending'
    WHERE b.finished_at IS NULL AND (b.cancelling_at IS NOT NULL OR b.expires_at <= now())
    FOR UPDATE OF r SKIP LOCKED
  )
  UPDATE requests r SET state = ended.next, not_before = NULL, finished_at = now(),
    updated_at = now(), ${endedError("ended.next", "NULL", "NULL", "r.error_message")}
  FROM ended WHERE r.id = ended.id
  RETURNING r.id`;

/**
 * Locks the requests named by $1 in id order. Every statement that changes
 * several claimed requests at once takes its row locks through it first: a
 * renewal and a report of overlapping claims, locking in their own orders,
 * deadlocked (seen at 10,000 requests / 20 ms upstream: a Sync failed with
 * 40P01). The statement then waits for it with {@link LOCKED}, never by
 * joining it.
 */
const LOCK_IN_ID_ORDER = `lk AS (SELECT id FROM requests WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE)`;

/**
 * The UPDATE's condition that every row of `lk` is locked: an InitPlan that
 * reads `lk` whole once, before the UPDATE reads its first row (a one-time
 * filter). Joined instead (`lk.id = r.id`), `lk` met a join Postgres expects
 * one row from (the id and the token matched together), so with stale
 * statistics on the leased rows it planned a nested loop that read all of
 * `lk` again for every reported row: n² comparisons, 39,800 discarded for a
 * 200-row report, twice the statement's time (test/integration/lock-plans.test.ts;
 * bench/RESULTS.md, "reports with stale statistics").
 */
const LOCKED = `(SELECT count(*) FROM lk) >= 0`;

/**
 * RequestsRenewLeases: extends the current, unexpired leases among ($1 ids,
 * $2 tokens) of batches still running by $3 ms. Result: renewed ids, tokens, expiry.
 */
export const REQUESTS_RENEW = `
  WITH ${LOCK_IN_ID_ORDER}
  UPDATE requests r SET lease_expires_at = now() + $3 * interval '1 millisecond'
  FROM unnest($1::uuid[], $2::bigint[]) AS u(id, token), batches b
  WHERE ${LOCKED} AND r.id = u.id AND r.lease_token = u.token AND r.state = 'leased'
    AND r.lease_expires_at > now()
    AND b.id = r.batch_id AND b.cancelling_at IS NULL AND b.expires_at > now()
  RETURNING r.id, r.lease_token, r.lease_expires_at,
    extract(epoch FROM (r.lease_expires_at - now())) * 1000 AS ttl_ms`;

/** RequestsLeaseFacts: why leases were not renewed. Params: ids. */
export const REQUESTS_LEASE_FACTS = `
  SELECT r.id, r.state, r.lease_token, (r.lease_expires_at <= now()) AS lapsed,
    b.cancelling_at IS NOT NULL AS batch_cancelled, b.expires_at <= now() AS batch_expired
  FROM requests r JOIN batches b ON b.id = r.batch_id
  WHERE r.id = ANY($1::uuid[])`;

/**
 * RequestsRecordCompletions: terminal success for current leases.
 * Params: ids, tokens, statuses, headers (one json array text, an object per
 * request), bodies (one bytea: the bodies one after another), where each body
 * starts in it (from 1), the bodies' lengths. Result: ids recorded.
 *
 * The bodies travel as one binary parameter, not a bytea[]: node-postgres
 * writes an array as text, so every byte went as two hex digits that Node
 * wrote and Postgres parsed (bench/RESULTS.md, 2026-12-06, "a report's
 * bodies"). Each body is cut out in SET, once per updated row; the function
 * scan keeps its rows, so a plan that rescans u parses nothing again.
 */
export const REQUESTS_COMPLETE = `
  WITH ${LOCK_IN_ID_ORDER}
  UPDATE requests r SET state = 'completed', response_status = u.status,
    response_headers = u.headers, response_body = substring($5::bytea FROM u.start FOR u.len),
    error_code = NULL, error_message = NULL, lease_holder = NULL, lease_expires_at = NULL,
    finished_at = now(), updated_at = now()
  FROM ROWS FROM (unnest($1::uuid[]), unnest($2::bigint[]), unnest($3::int[]),
      jsonb_array_elements($4::jsonb), unnest($6::int[]), unnest($7::int[]))
    AS u(id, token, status, headers, start, len)
  WHERE ${LOCKED} AND r.id = u.id AND r.lease_token = u.token AND r.state = 'leased'
  RETURNING r.id`;

/**
 * RequestsLeaseContext: what a failure decision needs, for current leases.
 * Params: ids, tokens. Result: attempt (and how many were throttled), the
 * batch's policy and deadline, db now.
 */
export const REQUESTS_FAILURE_CONTEXT = `
  SELECT r.id, r.model, r.attempt, r.throttled_attempts, b.max_retries, b.initial_backoff_ms, b.max_backoff_ms,
    b.expires_at, now() AS now
  FROM requests r JOIN batches b ON b.id = r.batch_id
  JOIN unnest($1::uuid[], $2::bigint[]) AS u(id, token) ON u.id = r.id AND u.token = r.lease_token
  WHERE r.state = 'leased'`;

/** Where a failed attempt leaves its request: its decided next state, unless its batch ended. */
const FAIL_FINAL = unlessBatchEnded("u.next");

/**
 * RequestsRecordFailures: a failed attempt's outcome for current leases:
 * pending again at not_before, failed, or ended with its batch (expired
 * with this attempt's error in its message). A throttled attempt
 * (backpressure) is counted in throttled_attempts. Params: ids, tokens,
 * next states ('pending'|'failed'), not_before, statuses (null when none),
 * headers (json text), body excerpts, error codes, messages, throttled flags.
 */
export const REQUESTS_FAIL = `
  WITH ${LOCK_IN_ID_ORDER}
  UPDATE requests r SET state = ${FAIL_FINAL},
    not_before = CASE WHEN ${FAIL_FINAL} = 'pending' THEN u.not_before END,
    throttled_attempts = r.throttled_attempts + CASE WHEN u.throttled THEN 1 ELSE 0 END,
    response_status = u.status, response_headers = u.headers::jsonb, response_body = u.body,
    ${endedError(FAIL_FINAL, "u.code", "u.message", "u.message")},
    lease_holder = NULL, lease_expires_at = NULL, updated_at = now(),
    finished_at = CASE WHEN ${FAIL_FINAL} = 'pending' THEN NULL ELSE now() END
  FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[], $5::int[],
      $6::text[], $7::bytea[], $8::text[], $9::text[], $10::boolean[])
      AS u(id, token, next, not_before, status, headers, body, code, message, throttled),
    batches b
  WHERE ${LOCKED} AND r.id = u.id AND r.lease_token = u.token AND r.state = 'leased'
    AND b.id = r.batch_id
  RETURNING r.id, r.state`;

/** Where a released request goes: pending, unless its batch ended. */
const RELEASE_FINAL = unlessBatchEnded("'pending'");

/**
 * RequestsRelease: a dispatcher gives requests back without an outcome:
 * pending, or ended with the batch. An unsent one ($3) gets its attempt back;
 * a sent one keeps it counted. The token is checked in the UPDATE's own
 * WHERE, which Postgres evaluates again on a row's newest version under READ
 * COMMITTED: a row reaped and claimed again since the statement began must
 * not be freed. Params: ids, tokens, unsent flags.
 */
export const REQUESTS_RELEASE = `
  WITH ${LOCK_IN_ID_ORDER}
  UPDATE requests r SET state = ${RELEASE_FINAL}, lease_holder = NULL, lease_expires_at = NULL,
    not_before = NULL, updated_at = now(),
    attempt = CASE WHEN u.unsent THEN r.attempt - 1 ELSE r.attempt END,
    finished_at = CASE WHEN ${RELEASE_FINAL} = 'pending' THEN NULL ELSE now() END,
    ${endedError(RELEASE_FINAL, "r.error_code", "r.error_message", "r.error_message")}
  FROM unnest($1::uuid[], $2::bigint[], $3::boolean[]) AS u(id, token, unsent), batches b
  WHERE ${LOCKED} AND r.id = u.id AND r.lease_token = u.token AND r.state = 'leased'
    AND b.id = r.batch_id
  RETURNING r.id, r.state`;

/** ModelLimitsHold: holds back grants for a model until now + $2 ms (keeps a later hold). */
export const MODEL_LIMITS_HOLD = `
  INSERT INTO model_limits (model, hold_until) VALUES ($1, now() + $2 * interval '1 millisecond')
  ON CONFLICT (model) DO UPDATE SET hold_until = greatest(
    coalesce(model_limits.hold_until, excluded.hold_until), excluded.hold_until)`;
