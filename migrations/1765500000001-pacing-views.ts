import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * `slot_grants.pacing`: how the grant's holder paces the model now, as its
 * last Sync said (mode, concurrency, calls and 429s in the last minute;
 * docs/pacing.md, "What is visible where"). ListModelLimits sums the
 * unexpired grants' views; a grant's row goes with its slots, so a dead
 * dispatcher's view goes with it. Null until the holder's first attempt.
 */
export class PacingViews1765500000001 implements MigrationInterface {
  name = "PacingViews1765500000001";

  async up(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE slot_grants ADD COLUMN pacing jsonb`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE slot_grants DROP COLUMN pacing`);
  }
}
