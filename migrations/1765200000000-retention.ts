import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * Retention (docs/operations.md): finished batches and old files are deleted
 * in bounded chunks by one replica at a time (src/storage/retention.ts), and
 * the change log of a finished batch is dropped once no stream can need it.
 *
 * - `batches.retention_ms`: the batch's own retention (null: the server's
 *   setting at the time of the pass; 0: kept until deleted).
 * - `batches.purging_at` / `files.purging_at`: deletion has started; RetryBatch
 *   and CreateBatch refuse such a batch or file, so nothing runs on rows that
 *   are going away.
 * - `batches.events_pruned_through`: events with seq ≤ it may be gone; a
 *   stream whose cursor is older starts again from a snapshot (the final
 *   state) instead of missing changes (docs/streaming.md).
 * - `batches_finished`: the passes' scan of finished batches by age. Its
 *   predicate names only `finished_at`, already in batches_unfinished_expiry's,
 *   so the trigger's counter updates stay HOT.
 *
 * Autovacuum per table, for its update rate (the defaults, 20 % of the table
 * dead before a vacuum, let a 10-million-row `requests` carry 2 million dead
 * rows, ~3 updates per request, before anything is reclaimed):
 * - `requests`: every request is written ~3 times (claim, outcome, renewals)
 *   and deleted by retention: vacuum at 2 % dead, analyze at 2 %, and after
 *   5 % inserted (visibility map for index-only scans of new batches).
 * - `request_events`: insert-only, then deleted in bulk: the same.
 * - `batches`: small, its row updated by every report of its requests: vacuum
 *   every 1,000 dead rows whatever the size (scale factor 0).
 * - `slot_grants`, `rate_shares`, `model_limits`: a few rows rewritten many
 *   times a second: the same.
 */
export class Retention1765200000000 implements MigrationInterface {
  name = "Retention1765200000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      ALTER TABLE batches
        ADD COLUMN retention_ms bigint CONSTRAINT batches_retention_ms_check CHECK (retention_ms >= 0),
        ADD COLUMN purging_at timestamptz,
        ADD COLUMN events_pruned_through bigint NOT NULL DEFAULT 0`);
    await q.query(`ALTER TABLE files ADD COLUMN purging_at timestamptz`);
    await q.query(
      `CREATE INDEX batches_finished ON batches (finished_at) WHERE finished_at IS NOT NULL`,
    );
    for (const table of ["requests", "request_events"]) {
      await q.query(`ALTER TABLE ${table} SET (
        autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05)`);
    }
    for (const table of ["batches", "slot_grants", "rate_shares", "model_limits"]) {
      await q.query(`ALTER TABLE ${table} SET (
        autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.05)`);
    }
  }

  async down(q: QueryRunner): Promise<void> {
    for (const table of ["requests", "request_events"]) {
      await q.query(`ALTER TABLE ${table} RESET (autovacuum_vacuum_scale_factor,
        autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor,
        autovacuum_vacuum_insert_scale_factor)`);
    }
    for (const table of ["batches", "slot_grants", "rate_shares", "model_limits"]) {
      await q.query(`ALTER TABLE ${table} RESET (autovacuum_vacuum_scale_factor,
        autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor)`);
    }
    await q.query(`DROP INDEX batches_finished`);
    await q.query(`ALTER TABLE files DROP COLUMN purging_at`);
    await q.query(`ALTER TABLE batches DROP COLUMN retention_ms, DROP COLUMN purging_at,
      DROP COLUMN events_pruned_through`);
  }
}
