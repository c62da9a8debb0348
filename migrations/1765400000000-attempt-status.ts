import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * Each state change in `request_events` keeps the request's upstream status
 * and error code as they were after it, so `fusillade request ID` can say why
 * every attempt ended ("retried after 429"), not only the last one. The
 * trigger is the one of 1764500000000-capacity-leases with two more columns
 * in its INSERT; both are nullable (no rewrite of the table).
 */
export class AttemptStatus1765400000000 implements MigrationInterface {
  name = "AttemptStatus1765400000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(
      `ALTER TABLE request_events ADD COLUMN response_status integer, ADD COLUMN error_code text`,
    );
    await q.query(`
      CREATE OR REPLACE FUNCTION requests_after_update() RETURNS trigger LANGUAGE plpgsql
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

          INSERT INTO request_events (batch_id, seq, request_id, state, attempt, response_status, error_code)
          SELECT n.batch_id, seq_end - d.n + row_number() OVER (ORDER BY n.id), n.id, n.state, n.attempt,
            n.response_status, n.error_code
          FROM new_rows n JOIN old_rows o ON o.id = n.id
          WHERE n.batch_id = d.batch_id AND n.state <> o.state;

          PERFORM pg_notify('fusillade_batch', d.batch_id::text);
        END LOOP;

        PERFORM pg_notify('fusillade_work', m.model)
        FROM (SELECT DISTINCT n.model FROM new_rows n JOIN old_rows o ON o.id = n.id
              WHERE n.state <> o.state AND n.state = 'pending') m;
        RETURN NULL;
      END
      $fn$`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE OR REPLACE FUNCTION requests_after_update() RETURNS trigger LANGUAGE plpgsql
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

        PERFORM pg_notify('fusillade_work', m.model)
        FROM (SELECT DISTINCT n.model FROM new_rows n JOIN old_rows o ON o.id = n.id
              WHERE n.state <> o.state AND n.state = 'pending') m;
        RETURN NULL;
      END
      $fn$`);
    await q.query(`ALTER TABLE request_events DROP COLUMN response_status, DROP COLUMN error_code`);
  }
}
