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
 *   statement raises it, and RetryBatch resets it.
 */
export class Pacing1765000000000 implements MigrationInterface {
  name = "Pacing1765000000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      ALTER TABLE model_limits
        ADD COLUMN rpm integer CHECK (rpm > 0),
        ADD COLUMN tpm integer CHECK (tpm > 0)`);
    await q.query(`ALTER TABLE requests ADD COLUMN throttled_attempts integer NOT NULL DEFAULT 0`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE requests DROP COLUMN throttled_attempts`);
    await q.query(`ALTER TABLE model_limits DROP COLUMN tpm, DROP COLUMN rpm`);
  }
}
