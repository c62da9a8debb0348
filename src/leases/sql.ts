/**
 * Named SQL of the lease paths. Each statement updates `requests` at most
 * once per transaction, so the trigger's batch locks are the last locks a
 * transaction takes (lock order: model_limits row → requests → batches).
 */

/**
 * RequestsGrantForModel: up to $2 leases of model $1 for holder $3, TTL $4 ms,
 * never past the model's limit ($5 when none is set). The statement is the
 * plpgsql function fusillade_grant (see the migration): lock the model's
 * limit row, count its leases in a fresh snapshot, claim.
 */
export const REQUESTS_GRANT = `SELECT * FROM fusillade_grant($1, $2, $3, $4, $5)`;

/**
 * ModelsWithReadyWork: models (optionally only $1) below their limit ($2
 * when none is set), with no 429 hold, and with a pending request whose
 * not_before has passed. A hint only (no lock): the grant re-checks.
 */
export const MODELS_WITH_READY_WORK = `
  SELECT m.model FROM model_limits m
  CROSS JOIN LATERAL (
    -- LATERAL + LIMIT: one short index scan per model. As an EXISTS, the
    -- planner hashed every pending row of every model instead (13 ms p50
    -- per call at 20,000 requests in flight; see bench/RESULTS.md).
    SELECT 1 FROM requests r
    WHERE r.model = m.model AND r.state = 'pending'
      AND (r.not_before IS NULL OR r.not_before <= now())
    ORDER BY r.created_at, r.line
    LIMIT 1
  ) ready
  WHERE (cardinality($1::text[]) = 0 OR m.model = ANY($1::text[]))
    AND (m.hold_until IS NULL OR m.hold_until <= now())
    AND coalesce(m.max_in_flight, $2) >
      (SELECT count(*) FROM requests l WHERE l.model = m.model AND l.state = 'leased')`;

/**
 * The state a request leaves a lease for when its batch was cancelled or
 * ran out of time; otherwise $fallback. Used by release, retry and reap.
 */
const unlessBatchEnded = (fallback: string) => `CASE
    WHEN b.cancelling_at IS NOT NULL THEN 'canceled'
    WHEN b.expires_at <= now() THEN 'expired'
    ELSE ${fallback} END`;

/** Error columns for a request that ended with its batch. */
const endedError = (state: string, fallbackCode: string, fallbackMessage: string) => `
    error_code = CASE ${state}
      WHEN 'canceled' THEN 'batch_cancelled' WHEN 'expired' THEN 'batch_expired'
      ELSE ${fallbackCode} END,
    error_message = CASE ${state}
      WHEN 'canceled' THEN 'the batch was cancelled before this request finished'
      WHEN 'expired' THEN 'the batch''s completion window closed before this request finished'
      ELSE ${fallbackMessage} END`;

/**
 * RequestsReapExpiredLeases: leases past their expiry go back to pending
 * (the attempt stays counted), or fail when the attempts are used up, or
 * end with their batch. Params: model (null = all). Uses requests_leased.
 */
export const REQUESTS_REAP_EXPIRED = `
  WITH dead AS (
    SELECT r.id,
      ${unlessBatchEnded("CASE WHEN r.attempt > b.max_retries THEN 'failed' ELSE 'pending' END")} AS next
    FROM requests r JOIN batches b ON b.id = r.batch_id
    WHERE r.state = 'leased' AND r.lease_expires_at < now()
      AND ($1::text IS NULL OR r.model = $1)
    FOR UPDATE OF r SKIP LOCKED
  )
  UPDATE requests r SET
    state = dead.next, lease_holder = NULL, lease_expires_at = NULL, updated_at = now(),
    finished_at = CASE WHEN dead.next = 'pending' THEN NULL ELSE now() END,
    response_status = NULL, response_headers = NULL, response_body = NULL,
    ${endedError("dead.next", "'lease_expired'", "'the dispatcher holding this request stopped renewing its lease (' || r.attempt || ' attempts)'")}
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
    updated_at = now(), ${endedError("ended.next", "NULL", "NULL")}
  FROM ended WHERE r.id = ended.id
  RETURNING r.id`;

/**
 * RequestsRenewLeases: extends the current, unexpired leases among ($1 ids,
 * $2 tokens) of batches still running by $3 ms. Result: renewed ids, tokens, expiry.
 */
export const REQUESTS_RENEW = `
  UPDATE requests r SET lease_expires_at = now() + $3 * interval '1 millisecond'
  FROM unnest($1::uuid[], $2::bigint[]) AS u(id, token), batches b
  WHERE r.id = u.id AND r.lease_token = u.token AND r.state = 'leased'
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
 * Params: ids, tokens, statuses, headers (json text), bodies. Result: ids recorded.
 */
export const REQUESTS_COMPLETE = `
  UPDATE requests r SET state = 'completed', response_status = u.status,
    response_headers = u.headers::jsonb, response_body = u.body, error_code = NULL,
    error_message = NULL, lease_holder = NULL, lease_expires_at = NULL,
    finished_at = now(), updated_at = now()
  FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::text[], $5::text[])
    AS u(id, token, status, headers, body)
  WHERE r.id = u.id AND r.lease_token = u.token AND r.state = 'leased'
  RETURNING r.id`;

/**
 * RequestsLeaseContext: what a failure decision needs, for current leases.
 * Params: ids, tokens. Result: attempt, the batch's policy and deadline, db now.
 */
export const REQUESTS_FAILURE_CONTEXT = `
  SELECT r.id, r.model, r.attempt, b.max_retries, b.initial_backoff_ms, b.max_backoff_ms,
    b.expires_at, now() AS now
  FROM requests r JOIN batches b ON b.id = r.batch_id
  JOIN unnest($1::uuid[], $2::bigint[]) AS u(id, token) ON u.id = r.id AND u.token = r.lease_token
  WHERE r.state = 'leased'`;

/**
 * RequestsRecordFailures: a failed attempt's outcome for current leases:
 * pending again at not_before, failed, or ended with its batch.
 * Params: ids, tokens, next states ('pending'|'failed'), not_before, statuses
 * (null when none), headers (json text), body excerpts, error codes, messages.
 */
export const REQUESTS_FAIL = `
  WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[], $5::int[],
      $6::text[], $7::text[], $8::text[], $9::text[])
      AS u(id, token, next, not_before, status, headers, body, code, message)
  ), decided AS (
    SELECT r.id, u.token, u.not_before, u.status, u.headers, u.body, u.code, u.message,
      ${unlessBatchEnded("u.next")} AS final
    FROM requests r JOIN u ON u.id = r.id AND u.token = r.lease_token
    JOIN batches b ON b.id = r.batch_id
    WHERE r.state = 'leased'
  )
  UPDATE requests r SET state = d.final,
    not_before = CASE WHEN d.final = 'pending' THEN d.not_before END,
    response_status = d.status, response_headers = d.headers::jsonb, response_body = d.body,
    ${endedError("d.final", "d.code", "d.message")},
    lease_holder = NULL, lease_expires_at = NULL, updated_at = now(),
    finished_at = CASE WHEN d.final = 'pending' THEN NULL ELSE now() END
  FROM decided d WHERE r.id = d.id AND r.lease_token = d.token AND r.state = 'leased'
  RETURNING r.id, r.state`;

/**
 * RequestsRelease: a dispatcher gives requests back without an outcome:
 * pending (attempt stays counted), or ended with the batch. Params: ids, tokens.
 */
export const REQUESTS_RELEASE = `
  WITH decided AS (
    SELECT r.id, ${unlessBatchEnded("'pending'")} AS final
    FROM requests r JOIN batches b ON b.id = r.batch_id
    JOIN unnest($1::uuid[], $2::bigint[]) AS u(id, token) ON u.id = r.id AND u.token = r.lease_token
    WHERE r.state = 'leased'
  )
  UPDATE requests r SET state = d.final, lease_holder = NULL, lease_expires_at = NULL,
    not_before = NULL, updated_at = now(),
    finished_at = CASE WHEN d.final = 'pending' THEN NULL ELSE now() END,
    ${endedError("d.final", "r.error_code", "r.error_message")}
  FROM decided d WHERE r.id = d.id AND r.state = 'leased'
  RETURNING r.id, r.state`;

/** ModelLimitsHold: holds back grants for a model until now + $2 ms (keeps a later hold). */
export const MODEL_LIMITS_HOLD = `
  INSERT INTO model_limits (model, hold_until) VALUES ($1, now() + $2 * interval '1 millisecond')
  ON CONFLICT (model) DO UPDATE SET hold_until = greatest(
    coalesce(model_limits.hold_until, excluded.hold_until), excluded.hold_until)`;

/**
 * NextWakeTime: the earliest moment grants may become possible without a
 * notification: a retry's not_before, a lease's expiry, or a hold's end.
 * Params: models (empty = all). Result: ms from now (null = nothing scheduled).
 */
export const NEXT_WAKE = `
  SELECT extract(epoch FROM (least(
    (SELECT min(not_before) FROM requests
      WHERE state = 'pending' AND not_before > now()
        AND (cardinality($1::text[]) = 0 OR model = ANY($1::text[]))),
    (SELECT min(lease_expires_at) FROM requests
      WHERE state = 'leased' AND (cardinality($1::text[]) = 0 OR model = ANY($1::text[]))),
    (SELECT min(hold_until) FROM model_limits
      WHERE hold_until > now() AND (cardinality($1::text[]) = 0 OR model = ANY($1::text[])))
  ) - now())) * 1000 AS ms`;
