import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * Fair share (docs/fair-share.md): batches get a priority class, tenants a
 * weight, and a model's pending requests are indexed per batch, so the claim
 * can take each active batch's oldest ready requests without reading another
 * batch's rows. The index replaces `requests_pending` (same rows, one more key).
 */
export class FairShare1764900000000 implements MigrationInterface {
  name = "FairShare1764900000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(
      `ALTER TABLE batches ADD COLUMN priority smallint NOT NULL DEFAULT 0
         CHECK (priority BETWEEN -100 AND 100)`,
    );
    await q.query(`
      CREATE TABLE tenants (
        name text PRIMARY KEY,
        weight integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
        updated_at timestamptz NOT NULL DEFAULT now()
      )`);
    await q.query(
      `CREATE INDEX requests_pending_batch ON requests (model, batch_id, created_at, line)
         WHERE state = 'pending'`,
    );
    await q.query(`DROP INDEX requests_pending`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(
      `CREATE INDEX requests_pending ON requests (model, created_at, line) WHERE state = 'pending'`,
    );
    await q.query(`DROP INDEX requests_pending_batch`);
    await q.query(`DROP TABLE tenants`);
    await q.query(`ALTER TABLE batches DROP COLUMN priority`);
  }
}
