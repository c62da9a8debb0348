import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * Fewer writes per request on the hot path (docs/architecture.md, "What the
 * hot path writes"). A state change cannot be a HOT update (`state` is in
 * the predicates of the queue's partial indexes), so every index whose
 * predicate the new row version meets gets a new entry. Per request, claim
 * and completion used to add 11 index entries; this takes out 2:
 *
 * - `requests_batch_state` (batch_id, state, line) indexed every row in
 *   every state: a claim and a completion each added an entry. It now holds
 *   only the states a batch is read by that are not on the happy path's way
 *   (pending, failed, canceled, expired): RetryBatch, CancelBatch and reads
 *   filtered on those states. Reads of completed rows (or of every terminal
 *   state) walk the (batch_id, line) unique index, as they did already.
 * - `requests_leased` gains `batch_id`, so a batch's claims of a model
 *   (fair share, batches of several models) are read from the claims alone;
 *   same entries as before (one per claim).
 * - `requests` gets fillfactor 50: a state change writes a new row version,
 *   and on a full page that version goes to another page, which costs a
 *   lock record, a second page and the whole new tuple in the WAL. With half
 *   of each page free at ingest, a claim's versions stay on the page, and a
 *   completion's too once the claim's dead versions are pruned (responses up
 *   to about the request's size). Measured: dispatch WAL per request 2,405 →
 *   1,838 bytes; the table ends no larger (pruned space is reused in place,
 *   where full pages spilled to new ones). Only pages written from now on
 *   are filled to 50 %.
 * - `request_events` loses its foreign key to `batches`: its only writer is
 *   the requests trigger, which inserts a batch's events right after
 *   updating that batch's row in the same statement (the event's seq comes
 *   from that row: no row, no seq, and seq is NOT NULL), so the per-row
 *   key check (two per request) proved nothing new. Deleting a batch still
 *   deletes its events, through a statement trigger on `batches`.
 */
export class HotPathWrites1765300000000 implements MigrationInterface {
  name = "HotPathWrites1765300000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(
      `CREATE INDEX requests_batch_unsettled ON requests (batch_id, state, line)
         WHERE state IN ('pending', 'failed', 'canceled', 'expired')`,
    );
    await q.query(`DROP INDEX requests_batch_state`);
    await q.query(
      `CREATE INDEX requests_leased_batch ON requests (model, batch_id) WHERE state = 'leased'`,
    );
    await q.query(`DROP INDEX requests_leased`);

    await q.query(`ALTER TABLE requests SET (fillfactor = 50)`);

    await q.query(`ALTER TABLE request_events DROP CONSTRAINT request_events_batch_id_fkey`);
    await q.query(`
      CREATE FUNCTION batches_after_delete() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        DELETE FROM request_events e USING gone g WHERE e.batch_id = g.id;
        RETURN NULL;
      END
      $fn$`);
    await q.query(`
      CREATE TRIGGER batches_after_delete AFTER DELETE ON batches
      REFERENCING OLD TABLE AS gone
      FOR EACH STATEMENT EXECUTE FUNCTION batches_after_delete()`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TRIGGER batches_after_delete ON batches`);
    await q.query(`DROP FUNCTION batches_after_delete()`);
    // Events of batches deleted meanwhile went with them: the key holds again.
    await q.query(
      `ALTER TABLE request_events ADD CONSTRAINT request_events_batch_id_fkey
         FOREIGN KEY (batch_id) REFERENCES batches (id) ON DELETE CASCADE`,
    );
    await q.query(`ALTER TABLE requests RESET (fillfactor)`);
    await q.query(`CREATE INDEX requests_leased ON requests (model) WHERE state = 'leased'`);
    await q.query(`DROP INDEX requests_leased_batch`);
    await q.query(`CREATE INDEX requests_batch_state ON requests (batch_id, state, line)`);
    await q.query(`DROP INDEX requests_batch_unsettled`);
  }
}
