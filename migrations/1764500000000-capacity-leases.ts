import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * Capacity leases (docs/capacity-leases.md): slot grants per (model, holder)
 * count against a model's limit; request claims (`requests.state = 'leased'`)
 * no longer do.
 *
 * - `slot_grants` and `fusillade_slots()`, the one statement that changes a
 *   grant (under the model's limit-row lock);
 * - the requests trigger wakes waiters only when a request becomes pending:
 *   a finished request frees no slot any more (slots are freed by hand-backs,
 *   which NOTIFY themselves);
 * - `fusillade_grant()`, the per-request grant, goes.
 */
export class CapacityLeases1764500000000 implements MigrationInterface {
  name = "CapacityLeases1764500000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE slot_grants (
        model text NOT NULL,
        holder text NOT NULL,
        token bigint NOT NULL,
        slots integer NOT NULL CHECK (slots >= 0),
        -- The holder's demand at its last Sync; fair shares are computed from it.
        want integer NOT NULL CHECK (want >= 0),
        expires_at timestamptz NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (model, holder)
      )`);

    // SlotGrantSync: one dispatcher's grant of one model, under the model's
    // limit-row lock (so grants of one model are serialized fleet-wide):
    // - token 0: a new grant (the dispatcher runs none of the model); any old
    //   row of the holder is void. Otherwise the token must match an unexpired
    //   row, else the answer is `lost` and nothing changes;
    // - the grant is cut to p_keep (a hand-back), then grown toward the
    //   holder's target out of the slots no unexpired grant holds;
    // - target: the max-min fair share of the limit over the unexpired
    //   holders' wants (water filling; the remainder one slot each to the
    //   lowest holder names, so no slot is left over);
    // - a holder that keeps nothing and wants nothing keeps no row.
    // A cut NOTIFYs fusillade_work: holders below their target may grow.
    // Result: one row (token, slots, target, lost); none for token 0 with nothing to grant.
    await q.query(`
      CREATE FUNCTION fusillade_slots(p_model text, p_holder text, p_token bigint, p_keep integer,
        p_want integer, p_ttl_ms integer, p_default_limit integer)
      RETURNS TABLE (token bigint, slots integer, target integer, lost boolean)
      LANGUAGE plpgsql VOLATILE AS $fn$
      DECLARE
        v_limit integer;
        v_held boolean;
        v_old integer := 0;
        v_mine integer := 0;
        v_want integer := greatest(p_want, 0);
        v_token bigint;
        v_others integer;
        v_target integer := 0;
        v_remaining integer;
        v_left integer;
        v_rank integer := 0;
        v_share integer;
        v_capped boolean := false;
        w record;
      BEGIN
        SELECT coalesce(m.max_in_flight, p_default_limit), coalesce(m.hold_until > now(), false)
          INTO v_limit, v_held
          FROM model_limits m WHERE m.model = p_model FOR UPDATE;
        IF NOT FOUND THEN
          IF p_token <> 0 THEN RETURN QUERY SELECT p_token, 0, 0, true; END IF;
          RETURN;
        END IF;

        SELECT s.token, s.slots INTO v_token, v_old FROM slot_grants s
          WHERE s.model = p_model AND s.holder = p_holder AND s.expires_at > now();
        IF p_token <> 0 THEN
          IF v_token IS NULL OR v_token <> p_token THEN
            DELETE FROM slot_grants s
              WHERE s.model = p_model AND s.holder = p_holder AND s.expires_at <= now();
            RETURN QUERY SELECT p_token, 0, 0, true;
            RETURN;
          END IF;
          v_mine := least(v_old, greatest(p_keep, 0));
        ELSE
          v_old := coalesce(v_old, 0);
          v_token := nextval('lease_token_seq');
        END IF;
        v_want := greatest(v_want, v_mine);

        -- Water filling over the wants, ours included, in (want, holder) order.
        SELECT count(*) + 1 INTO v_left FROM slot_grants s
          WHERE s.model = p_model AND s.holder <> p_holder AND s.expires_at > now() AND s.want > 0;
        v_remaining := v_limit;
        FOR w IN
          SELECT s.want, s.holder FROM slot_grants s
            WHERE s.model = p_model AND s.holder <> p_holder AND s.expires_at > now() AND s.want > 0
          UNION ALL SELECT v_want, p_holder
          ORDER BY 1, 2
        LOOP
          IF NOT v_capped THEN
            v_share := v_remaining / v_left;
            IF w.want <= v_share THEN
              IF w.holder = p_holder THEN v_target := w.want; EXIT; END IF;
              v_remaining := v_remaining - w.want;
              v_left := v_left - 1;
              CONTINUE;
            END IF;
            v_capped := true;
          END IF;
          -- Every holder from here on gets v_share, the first (by name) v_remaining % v_left one more.
          IF w.holder < p_holder THEN v_rank := v_rank + 1; END IF;
        END LOOP;
        IF v_capped THEN
          v_target := v_share + CASE WHEN v_rank < v_remaining % v_left THEN 1 ELSE 0 END;
        END IF;

        SELECT coalesce(sum(s.slots), 0) INTO v_others FROM slot_grants s
          WHERE s.model = p_model AND s.holder <> p_holder AND s.expires_at > now();
        IF NOT v_held AND v_target > v_mine THEN
          v_mine := v_mine + least(v_target - v_mine, greatest(v_limit - v_others - v_mine, 0));
        END IF;

        IF v_mine < v_old THEN PERFORM pg_notify('fusillade_work', p_model); END IF;
        IF v_mine = 0 AND v_want = 0 THEN
          DELETE FROM slot_grants s WHERE s.model = p_model AND s.holder = p_holder;
          RETURN;
        END IF;
        INSERT INTO slot_grants AS s (model, holder, token, slots, want, expires_at)
          VALUES (p_model, p_holder, v_token, v_mine, v_want,
            now() + p_ttl_ms * interval '1 millisecond')
          ON CONFLICT (model, holder) DO UPDATE SET token = excluded.token, slots = excluded.slots,
            want = excluded.want, expires_at = excluded.expires_at, updated_at = now();
        RETURN QUERY SELECT v_token, v_mine, v_target, false;
      END
      $fn$`);

    await q.query(`DROP FUNCTION fusillade_grant(text, integer, text, integer, integer)`);

    // As in the first migration, but waiters are woken only when a request
    // becomes pending (new work, a retry, a release, a reap).
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
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP FUNCTION IF EXISTS fusillade_slots(text, text, bigint, integer, integer, integer, integer)`);
    await q.query(`DROP TABLE IF EXISTS slot_grants`);
    // The per-request grant and the old trigger body are not restored: a
    // down-migration of this step means going back to the first version's code.
  }
}
