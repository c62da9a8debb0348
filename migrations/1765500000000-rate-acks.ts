import type { MigrationInterface, QueryRunner } from "typeorm";
import { RATES_FUNCTION_V1 } from "./1765000000000-pacing.js";

/**
 * Rate shares acknowledged by their holders (docs/pacing.md, "Rate grants"):
 * `fusillade_rates()` takes what the holder says it spends now (`rpm_held`,
 * `tpm_held` of its Sync). A share cut from a holder counted against the
 * model's rate until the holder's grant could have run out: a minute after
 * the cut, so a second dispatcher joining a rated model waited a minute for
 * its share (measured: two dispatchers, 1,200/min, a batch of 160 ran at
 * 600/min). Now it counts until the holder's next Sync says it spends the
 * smaller share (it keeps to what it said until it hears the answer), or its
 * grant expires (it fences itself before). A share stops counting at its
 * grant's expiry, not a minute after.
 *
 * Why the fleet keeps to the rate: at every moment, the shares the holders
 * may be spending add up to at most R (each is counted until its holder has
 * said it spends less, or can spend nothing), and each holder spends its
 * share through a bucket of one second's burst refilled at the share, so any
 * window of W seconds sees at most R·W/60 plus one second's burst.
 */
export class RateAcks1765500000000 implements MigrationInterface {
  name = "RateAcks1765500000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(
      `DROP FUNCTION fusillade_rates(text, text, integer, integer, bigint, integer)`,
    );
    // RateShareSync: as before (pacing migration), but a holder's cut share counts until it
    // says it holds less (p_rpm_held / p_tpm_held; null: not said) or its grant expires.
    await q.query(`
      CREATE FUNCTION fusillade_rates(p_model text, p_holder text, p_slot_want integer,
        p_rate_want integer, p_token_want bigint, p_ttl_ms integer,
        p_rpm_held integer, p_tpm_held integer)
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
        v_until timestamptz := now() + p_ttl_ms * interval '1 millisecond';
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
            CASE WHEN s.expires_at > now() THEN s.rpm ELSE 0 END,
            CASE WHEN s.rpm_counted_until > now() THEN s.rpm_counted ELSE 0 END)), 0),
          coalesce(sum(greatest(
            CASE WHEN s.expires_at > now() THEN s.tpm ELSE 0 END,
            CASE WHEN s.tpm_counted_until > now() THEN s.tpm_counted ELSE 0 END)), 0)
        INTO v_wants_r, v_wants_t, v_counted_r, v_counted_t
        FROM rate_shares s WHERE s.model = p_model AND s.holder <> p_holder;

        SELECT * INTO v_old FROM rate_shares s WHERE s.model = p_model AND s.holder = p_holder;
        IF FOUND THEN
          -- What it may be spending now: what it says, else what it was given (and may
          -- still be spending while it counts).
          v_old_r := coalesce(p_rpm_held, greatest(
            CASE WHEN v_old.expires_at > now() THEN v_old.rpm ELSE 0 END,
            CASE WHEN v_old.rpm_counted_until > now() THEN v_old.rpm_counted ELSE 0 END));
          v_old_t := coalesce(p_tpm_held, greatest(
            CASE WHEN v_old.expires_at > now() THEN v_old.tpm ELSE 0 END,
            CASE WHEN v_old.tpm_counted_until > now() THEN v_old.tpm_counted ELSE 0 END));
        END IF;
        IF v_rpm IS NOT NULL THEN
          v_new_r := least(fusillade_fill(v_rpm, v_rw, v_wants_r), greatest(v_rpm - v_counted_r, 0));
        END IF;
        IF v_tpm IS NOT NULL THEN
          v_new_t := least(fusillade_fill(v_tpm, v_tw, v_wants_t), greatest(v_tpm - v_counted_t, 0));
        END IF;

        -- A share above the new one that it may still be spending counts until it says
        -- otherwise or its grant runs out.
        INSERT INTO rate_shares AS s (model, holder, want, token_want, rpm, tpm, expires_at,
            rpm_counted, rpm_counted_until, tpm_counted, tpm_counted_until)
          VALUES (p_model, p_holder, v_rw, v_tw, v_new_r, v_new_t, v_until,
            v_old_r, CASE WHEN v_old_r > v_new_r THEN v_until END,
            v_old_t, CASE WHEN v_old_t > v_new_t THEN v_until END)
          ON CONFLICT (model, holder) DO UPDATE SET
            want = excluded.want, token_want = excluded.token_want,
            rpm = excluded.rpm, tpm = excluded.tpm, expires_at = excluded.expires_at,
            rpm_counted = excluded.rpm_counted, rpm_counted_until = excluded.rpm_counted_until,
            tpm_counted = excluded.tpm_counted, tpm_counted_until = excluded.tpm_counted_until;
        RETURN QUERY SELECT CASE WHEN v_rpm IS NULL THEN NULL ELSE v_new_r END,
          CASE WHEN v_tpm IS NULL THEN NULL ELSE v_new_t END;
      END
      $fn$`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(
      `DROP FUNCTION fusillade_rates(text, text, integer, integer, bigint, integer, integer, integer)`,
    );
    await q.query(RATES_FUNCTION_V1);
  }
}
