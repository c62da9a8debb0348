import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * Pacing (docs/pacing.md):
 * - `model_limits.rpm` / `tpm`: a model's requests and tokens per minute,
 *   held fleet-wide beside its concurrency limit (null: no rate set);
 * - `requests.throttled_attempts`: the attempts of a request that ended in
 *   backpressure (429, or 503 with Retry-After). They stay attempts (the
 *   history shows each), but do not use up `max_retries`: a request has
 *   spent `attempt - throttled_attempts` of its budget. No CHECK on it: on
 *   a large `requests` table a CHECK would scan every row, where the column
 *   with its constant default is a catalog change only; only the report
 *   statement raises it, and RetryBatch resets it;
 * - `rate_shares` and `fusillade_rates()`: each dispatcher's share of a
 *   model's rates, renewed with its slot grant (docs/pacing.md, "Rate
 *   grants"). Kept apart from `slot_grants`, whose rows go when their slots
 *   do: a share must keep counting for a minute after it was cut or expired.
 */
/** fusillade_rates as this migration made it (RateAcks1765500000000 replaces it, and puts it back on revert). */
export const RATES_FUNCTION_V1 = `
      CREATE FUNCTION fusillade_rates(p_model text, p_holder text, p_slot_want integer,
        p_rate_want integer, p_token_want bigint, p_ttl_ms integer)
      RETURNS TABLE (rpm integer, tpm integer)
      LANGUAGE plpgsql VOLATILE AS $fn$
      DECLARE
        v_rpm integer;
        v_tpm integer;
        v_rw bigint;
        v_tw bigint;
        v_wants_r bigint[];
        v_wants_t bigint[];
        v_counted_r bigint;
        v_counted_t bigint;
        v_old rate_shares%ROWTYPE;
        v_old_r integer := 0;
        v_old_t integer := 0;
        v_new_r integer := 0;
        v_new_t integer := 0;
      BEGIN
        SELECT m.rpm, m.tpm INTO v_rpm, v_tpm FROM model_limits m
          WHERE m.model = p_model FOR UPDATE;
        IF NOT FOUND OR (v_rpm IS NULL AND v_tpm IS NULL) THEN
          RETURN QUERY SELECT NULL::integer, NULL::integer;
          RETURN;
        END IF;
        v_rw := CASE WHEN p_rate_want > 0 THEN p_rate_want
          WHEN p_slot_want > 0 THEN coalesce(v_rpm, 0) ELSE 0 END;
        v_tw := CASE WHEN p_token_want > 0 THEN p_token_want
          WHEN p_slot_want > 0 THEN coalesce(v_tpm, 0) ELSE 0 END;

        SELECT
          array_agg(s.want) FILTER (WHERE s.expires_at > now() AND s.want > 0),
          array_agg(s.token_want) FILTER (WHERE s.expires_at > now() AND s.token_want > 0),
          coalesce(sum(greatest(
            CASE WHEN s.expires_at > now() - interval '1 minute' THEN s.rpm ELSE 0 END,
            CASE WHEN s.rpm_counted_until > now() THEN s.rpm_counted ELSE 0 END)), 0),
          coalesce(sum(greatest(
            CASE WHEN s.expires_at > now() - interval '1 minute' THEN s.tpm ELSE 0 END,
            CASE WHEN s.tpm_counted_until > now() THEN s.tpm_counted ELSE 0 END)), 0)
        INTO v_wants_r, v_wants_t, v_counted_r, v_counted_t
        FROM rate_shares s WHERE s.model = p_model AND s.holder <> p_holder;

        SELECT * INTO v_old FROM rate_shares s WHERE s.model = p_model AND s.holder = p_holder;
        IF FOUND AND v_old.expires_at > now() - interval '1 minute' THEN
          v_old_r := v_old.rpm;
          v_old_t := v_old.tpm;
        END IF;
        IF v_rpm IS NOT NULL THEN
          v_new_r := least(fusillade_fill(v_rpm, v_rw, v_wants_r), greatest(v_rpm - v_counted_r, 0));
        END IF;
        IF v_tpm IS NOT NULL THEN
          v_new_t := least(fusillade_fill(v_tpm, v_tw, v_wants_t), greatest(v_tpm - v_counted_t, 0));
        END IF;

        INSERT INTO rate_shares AS s (model, holder, want, token_want, rpm, tpm, expires_at)
          VALUES (p_model, p_holder, v_rw, v_tw, v_new_r, v_new_t,
            now() + p_ttl_ms * interval '1 millisecond')
          ON CONFLICT (model, holder) DO UPDATE SET
            want = excluded.want, token_want = excluded.token_want,
            rpm = excluded.rpm, tpm = excluded.tpm, expires_at = excluded.expires_at,
            rpm_counted = CASE WHEN v_new_r < v_old_r
              THEN greatest(v_old_r, CASE WHEN s.rpm_counted_until > now() THEN s.rpm_counted ELSE 0 END)
              ELSE s.rpm_counted END,
            rpm_counted_until = CASE WHEN v_new_r < v_old_r
              THEN now() + interval '1 minute' ELSE s.rpm_counted_until END,
            tpm_counted = CASE WHEN v_new_t < v_old_t
              THEN greatest(v_old_t, CASE WHEN s.tpm_counted_until > now() THEN s.tpm_counted ELSE 0 END)
              ELSE s.tpm_counted END,
            tpm_counted_until = CASE WHEN v_new_t < v_old_t
              THEN now() + interval '1 minute' ELSE s.tpm_counted_until END;
        RETURN QUERY SELECT CASE WHEN v_rpm IS NULL THEN NULL ELSE v_new_r END,
          CASE WHEN v_tpm IS NULL THEN NULL ELSE v_new_t END;
      END
      $fn$`;

export class Pacing1765000000000 implements MigrationInterface {
  name = "Pacing1765000000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      ALTER TABLE model_limits
        ADD COLUMN rpm integer CHECK (rpm > 0),
        ADD COLUMN tpm integer CHECK (tpm > 0)`);
    await q.query(`ALTER TABLE requests ADD COLUMN throttled_attempts integer NOT NULL DEFAULT 0`);
    await q.query(`
      CREATE TABLE rate_shares (
        model text NOT NULL,
        holder text NOT NULL,
        -- Demand at the last Sync: requests and tokens a minute it could use.
        want integer NOT NULL CHECK (want >= 0),
        token_want bigint NOT NULL CHECK (token_want >= 0),
        -- The share now.
        rpm integer NOT NULL CHECK (rpm >= 0),
        tpm integer NOT NULL CHECK (tpm >= 0),
        -- A larger share it held within the last minute, counted until then.
        rpm_counted integer NOT NULL DEFAULT 0,
        rpm_counted_until timestamptz,
        tpm_counted integer NOT NULL DEFAULT 0,
        tpm_counted_until timestamptz,
        expires_at timestamptz NOT NULL,
        PRIMARY KEY (model, holder)
      )`);

    // The max-min fair share of p_total for a holder wanting p_mine among
    // others wanting p_others (water filling; shares rounded down).
    await q.query(`
      CREATE FUNCTION fusillade_fill(p_total bigint, p_mine bigint, p_others bigint[])
      RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $fn$
      DECLARE
        v_left integer := coalesce(cardinality(p_others), 0) + 1;
        v_remaining bigint := p_total;
        v_level bigint;
        w bigint;
      BEGIN
        IF p_mine <= 0 THEN RETURN 0; END IF;
        FOR w IN SELECT x FROM unnest(coalesce(p_others, '{}') || p_mine) AS x ORDER BY x LOOP
          v_level := v_remaining / v_left;
          IF w > v_level THEN RETURN least(p_mine, v_level); END IF;
          v_remaining := v_remaining - w;
          v_left := v_left - 1;
        END LOOP;
        RETURN p_mine;
      END
      $fn$`);

    // RateShareSync: one dispatcher's share of one model's rates, under the
    // model's limit-row lock (serialized with its slot grants fleet-wide):
    // - demand: p_rate_want / p_token_want; 0 while it wants slots: all of it;
    // - target: the max-min fair share over the live holders' demands;
    // - a share grows only out of what no holder counts, where a holder
    //   counts the largest share it held in the last minute, and an expired
    //   share for a minute past its expiry: the counted shares add up to at
    //   most the rate, so the shares whose sends can fall in one minute never
    //   exceed it;
    // - a cut is at once; the old share stays counted for a minute.
    // Result: one row (rpm, tpm), each null when the model has no such rate.
    await q.query(RATES_FUNCTION_V1);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(
      `DROP FUNCTION IF EXISTS fusillade_rates(text, text, integer, integer, bigint, integer)`,
    );
    await q.query(`DROP FUNCTION IF EXISTS fusillade_fill(bigint, bigint, bigint[])`);
    await q.query(`DROP TABLE IF EXISTS rate_shares`);
    await q.query(`ALTER TABLE requests DROP COLUMN throttled_attempts`);
    await q.query(`ALTER TABLE model_limits DROP COLUMN tpm, DROP COLUMN rpm`);
  }
}
