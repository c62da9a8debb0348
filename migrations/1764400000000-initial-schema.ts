import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * The whole first schema: files and their templates, batches, requests,
 * request events (the change log that streams resume from), model limits.
 *
 * Batch counters and events are maintained by one statement-level trigger
 * on `requests`, so every transition, whoever makes it, keeps them true
 * (invariant 5) in the same transaction. The trigger locks the affected
 * batch rows in id order; every writer updates `requests` before it touches
 * `batches`, which keeps the lock order one-way (no deadlocks).
 */
export class InitialSchema1764400000000 implements MigrationInterface {
  name = "InitialSchema1764400000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE files (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        filename text NOT NULL DEFAULT '',
        template_count integer NOT NULL CHECK (template_count >= 0),
        size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
        models text[] NOT NULL DEFAULT '{}',
        idempotency_key text UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now()
      )`);
    await q.query(`CREATE INDEX files_created ON files (created_at, id)`);

    await q.query(`
      CREATE TABLE request_templates (
        file_id uuid NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        line integer NOT NULL CHECK (line > 0),
        custom_id text,
        endpoint text NOT NULL CHECK (endpoint <> ''),
        method text NOT NULL CHECK (method <> ''),
        path text NOT NULL,
        body text NOT NULL,
        model text NOT NULL CHECK (model <> ''),
        api_key text,
        PRIMARY KEY (file_id, line)
      )`);
    await q.query(
      `CREATE UNIQUE INDEX request_templates_custom_id ON request_templates (file_id, custom_id) WHERE custom_id IS NOT NULL`,
    );

    // The batch's state is derived (see src/domain/batch-state.ts) from
    // cancelling_at, expires_at, finished_at and the counters, so that the
    // trigger and CancelBatch never need to agree on a stored state.
    await q.query(`
      CREATE TABLE batches (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        -- No foreign key: a batch outlives its file (requests are a snapshot) and keeps its id.
        file_id uuid,
        metadata jsonb NOT NULL DEFAULT '{}',
        completion_window text NOT NULL,
        max_retries integer NOT NULL CHECK (max_retries >= 0),
        initial_backoff_ms integer NOT NULL CHECK (initial_backoff_ms >= 0),
        max_backoff_ms integer NOT NULL CHECK (max_backoff_ms >= 0),
        idempotency_key text UNIQUE,
        total_count integer NOT NULL CHECK (total_count >= 0),
        pending_count integer NOT NULL CHECK (pending_count >= 0),
        leased_count integer NOT NULL DEFAULT 0 CHECK (leased_count >= 0),
        completed_count integer NOT NULL DEFAULT 0 CHECK (completed_count >= 0),
        failed_count integer NOT NULL DEFAULT 0 CHECK (failed_count >= 0),
        canceled_count integer NOT NULL DEFAULT 0 CHECK (canceled_count >= 0),
        expired_count integer NOT NULL DEFAULT 0 CHECK (expired_count >= 0),
        event_seq bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        cancelling_at timestamptz,
        finished_at timestamptz,
        CONSTRAINT batches_counts_add_up CHECK (
          pending_count + leased_count + completed_count + failed_count
            + canceled_count + expired_count = total_count),
        CONSTRAINT batches_finished_iff_all_terminal CHECK (
          (finished_at IS NOT NULL) = (pending_count + leased_count = 0))
      )`);
    await q.query(`CREATE INDEX batches_created ON batches (created_at, id)`);
    await q.query(`CREATE INDEX batches_file ON batches (file_id, created_at, id)`);
    await q.query(
      `CREATE INDEX batches_unfinished_expiry ON batches (expires_at) WHERE finished_at IS NULL`,
    );

    await q.query(`CREATE SEQUENCE lease_token_seq AS bigint`);
    await q.query(`
      CREATE TABLE requests (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        batch_id uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        line integer NOT NULL CHECK (line > 0),
        custom_id text,
        endpoint text NOT NULL,
        method text NOT NULL,
        path text NOT NULL,
        body text NOT NULL,
        model text NOT NULL,
        api_key text,
        state text NOT NULL DEFAULT 'pending' CHECK (
          state IN ('pending', 'leased', 'completed', 'failed', 'canceled', 'expired')),
        attempt integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
        not_before timestamptz,
        lease_token bigint,
        lease_holder text,
        lease_expires_at timestamptz,
        response_status integer,
        response_headers jsonb,
        response_body text,
        error_code text,
        error_message text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        UNIQUE (batch_id, line),
        CONSTRAINT requests_lease_iff_leased CHECK (
          (state = 'leased') = (lease_expires_at IS NOT NULL AND lease_holder IS NOT NULL)),
        CONSTRAINT requests_leased_has_token CHECK (state <> 'leased' OR lease_token IS NOT NULL),
        CONSTRAINT requests_leased_attempted CHECK (state <> 'leased' OR attempt > 0),
        CONSTRAINT requests_finished_iff_terminal CHECK (
          (state IN ('completed', 'failed', 'canceled', 'expired')) = (finished_at IS NOT NULL)),
        CONSTRAINT requests_completed_has_response CHECK (
          state <> 'completed' OR (response_status IS NOT NULL AND response_body IS NOT NULL
            AND error_code IS NULL)),
        CONSTRAINT requests_failure_has_error CHECK (
          state NOT IN ('failed', 'canceled', 'expired')
            OR (error_code IS NOT NULL AND error_message IS NOT NULL)),
        CONSTRAINT requests_not_before_only_pending CHECK (state = 'pending' OR not_before IS NULL)
      )`);
    // Hot paths: AcquireLeases scans a model's pending requests in FIFO order;
    // the lease count and reaper read a model's leased requests.
    await q.query(
      `CREATE INDEX requests_pending ON requests (model, created_at, line) WHERE state = 'pending'`,
    );
    await q.query(
      // Not keyed on lease_expires_at: renewals then stay HOT updates and add no index entries.
      `CREATE INDEX requests_leased ON requests (model) WHERE state = 'leased'`,
    );
    await q.query(
      `CREATE INDEX requests_retry_wait ON requests (model, not_before) WHERE state = 'pending' AND not_before IS NOT NULL`,
    );
    await q.query(`CREATE INDEX requests_batch_state ON requests (batch_id, state, line)`);
    await q.query(
      `CREATE INDEX requests_batch_custom_id ON requests (batch_id, custom_id) WHERE custom_id IS NOT NULL`,
    );

    // Append-only change log. seq is allocated per batch while the batch row
    // is locked, so within a batch seq order is commit order: a reader that
    // has seen seq N and later reads seq > N misses nothing.
    await q.query(`
      CREATE TABLE request_events (
        batch_id uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        seq bigint NOT NULL,
        request_id uuid NOT NULL,
        state text NOT NULL,
        attempt integer NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (batch_id, seq)
      )`);

    await q.query(`
      CREATE TABLE model_limits (
        model text PRIMARY KEY,
        max_in_flight integer CHECK (max_in_flight >= 0),
        hold_until timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now()
      )`);

    await q.query(`
      CREATE FUNCTION requests_after_update() RETURNS trigger LANGUAGE plpgsql
      -- Transition tables have no statistics: the planner guesses a handful of
      -- rows and picks nested loops for the old/new join, which took > 60 s
      -- for one 50,000-row CancelBatch. Hash joins take ~0.1 s.
      SET enable_nestloop = off
      AS $fn$
      DECLARE
        d record;
        seq_end bigint;
      BEGIN
        FOR d IN
          SELECT n.batch_id,
            count(*) AS n,
            count(*) FILTER (WHERE n.state = 'pending') - count(*) FILTER (WHERE o.state = 'pending') AS d_pending,
            count(*) FILTER (WHERE n.state = 'leased') - count(*) FILTER (WHERE o.state = 'leased') AS d_leased,
            count(*) FILTER (WHERE n.state = 'completed') - count(*) FILTER (WHERE o.state = 'completed') AS d_completed,
            count(*) FILTER (WHERE n.state = 'failed') - count(*) FILTER (WHERE o.state = 'failed') AS d_failed,
            count(*) FILTER (WHERE n.state = 'canceled') - count(*) FILTER (WHERE o.state = 'canceled') AS d_canceled,
            count(*) FILTER (WHERE n.state = 'expired') - count(*) FILTER (WHERE o.state = 'expired') AS d_expired
          FROM new_rows n JOIN old_rows o ON o.id = n.id
          WHERE n.state <> o.state
          GROUP BY n.batch_id
          ORDER BY n.batch_id
        LOOP
          UPDATE batches SET
            pending_count = pending_count + d.d_pending,
            leased_count = leased_count + d.d_leased,
            completed_count = completed_count + d.d_completed,
            failed_count = failed_count + d.d_failed,
            canceled_count = canceled_count + d.d_canceled,
            expired_count = expired_count + d.d_expired,
            event_seq = event_seq + d.n,
            updated_at = now(),
            finished_at = CASE
              WHEN pending_count + d.d_pending + leased_count + d.d_leased > 0 THEN NULL
              ELSE coalesce(finished_at, now()) END
          WHERE id = d.batch_id
          RETURNING event_seq INTO seq_end;

          INSERT INTO request_events (batch_id, seq, request_id, state, attempt)
          SELECT n.batch_id, seq_end - d.n + row_number() OVER (ORDER BY n.id), n.id, n.state, n.attempt
          FROM new_rows n JOIN old_rows o ON o.id = n.id
          WHERE n.batch_id = d.batch_id AND n.state <> o.state;

          PERFORM pg_notify('fusillade_batch', d.batch_id::text);
        END LOOP;

        -- Wake lease waiters: capacity was freed or work became pending.
        PERFORM pg_notify('fusillade_work', m.model)
        FROM (SELECT DISTINCT n.model FROM new_rows n JOIN old_rows o ON o.id = n.id
              WHERE n.state <> o.state AND (o.state = 'leased' OR n.state = 'pending')) m;
        RETURN NULL;
      END
      $fn$`);
    // RequestsGrantForModel: the grant, in one round trip. Locks the model's
    // limit row, then counts its leases in a new snapshot (a plpgsql statement
    // in a VOLATILE function sees what committed before the lock was won), then
    // leases at most limit − held of the oldest ready pending requests,
    // skipping rows other grants hold and batches cancelled or past their
    // window. Uses requests_pending (model, created_at, line) and requests_leased.
    await q.query(`
      CREATE FUNCTION fusillade_grant(p_model text, p_want integer, p_holder text,
        p_ttl_ms integer, p_default_limit integer)
      RETURNS TABLE (id uuid, batch_id uuid, custom_id text, model text, attempt integer,
        method text, endpoint text, path text, body text, api_key text, lease_token bigint,
        lease_expires_at timestamptz, ttl_ms double precision)
      LANGUAGE plpgsql VOLATILE AS $fn$
      DECLARE
        v_limit integer;
        v_held boolean;
        v_count integer;
        v_n integer;
      BEGIN
        SELECT coalesce(m.max_in_flight, p_default_limit), coalesce(m.hold_until > now(), false)
          INTO v_limit, v_held
          FROM model_limits m WHERE m.model = p_model FOR UPDATE;
        IF NOT FOUND OR v_held THEN RETURN; END IF;
        SELECT count(*) INTO v_count FROM requests r WHERE r.model = p_model AND r.state = 'leased';
        v_n := least(p_want, v_limit - v_count);
        IF v_n <= 0 THEN RETURN; END IF;
        RETURN QUERY
        WITH picked AS (
          SELECT r.id FROM requests r JOIN batches b ON b.id = r.batch_id
          WHERE r.model = p_model AND r.state = 'pending'
            AND (r.not_before IS NULL OR r.not_before <= now())
            AND b.cancelling_at IS NULL AND b.expires_at > now()
          ORDER BY r.created_at, r.line
          LIMIT v_n
          FOR UPDATE OF r SKIP LOCKED
        )
        UPDATE requests r SET
          state = 'leased', attempt = r.attempt + 1, not_before = NULL,
          lease_token = nextval('lease_token_seq'), lease_holder = p_holder,
          lease_expires_at = now() + p_ttl_ms * interval '1 millisecond', updated_at = now()
        FROM picked WHERE r.id = picked.id
        RETURNING r.id, r.batch_id, r.custom_id, r.model, r.attempt, r.method, r.endpoint, r.path,
          r.body, r.api_key, r.lease_token, r.lease_expires_at,
          (extract(epoch FROM (r.lease_expires_at - now())) * 1000)::double precision;
      END
      $fn$`);
    await q.query(`
      CREATE TRIGGER requests_after_update AFTER UPDATE ON requests
      REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
      FOR EACH STATEMENT EXECUTE FUNCTION requests_after_update()`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(
      `DROP TABLE IF EXISTS request_events, requests, batches, request_templates, files, model_limits CASCADE`,
    );
    await q.query(`DROP SEQUENCE IF EXISTS lease_token_seq`);
    await q.query(`DROP FUNCTION IF EXISTS requests_after_update()`);
    await q.query(`DROP FUNCTION IF EXISTS fusillade_grant(text, integer, text, integer, integer)`);
  }
}
