import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * Upstream API keys leave the template and request rows (docs/trust.md): each
 * is stored once, encrypted, in `api_keys`, and rows point at it. Keys stored
 * before this migration move over under key id 'plain'; the control plane
 * encrypts them at its next start (src/auth/secrets.ts).
 */
export class ApiKeys1764800000000 implements MigrationInterface {
  name = "ApiKeys1764800000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE api_keys (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        -- The file it came with (null: stored before this migration). Its rows
        -- go once that file is deleted and no batch of it is left.
        file_id uuid,
        -- Which key encrypted it ('plain': not yet encrypted).
        key_id text NOT NULL,
        iv bytea NOT NULL,
        sealed bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      )`);
    await q.query(`CREATE INDEX api_keys_key_id ON api_keys (key_id)`);
    await q.query(`CREATE INDEX api_keys_file ON api_keys (file_id)`);
    for (const table of ["request_templates", "requests"]) {
      await q.query(`ALTER TABLE ${table} ADD COLUMN api_key_id uuid`);
    }
    // One row per distinct stored key, then the references, then the plaintext goes.
    await q.query(`
      CREATE TEMP TABLE key_map ON COMMIT DROP AS
      SELECT gen_random_uuid() AS id, api_key FROM (
        SELECT api_key FROM request_templates WHERE api_key IS NOT NULL
        UNION SELECT api_key FROM requests WHERE api_key IS NOT NULL
      ) k`);
    await q.query(
      `INSERT INTO api_keys (id, key_id, iv, sealed)
       SELECT id, 'plain', ''::bytea, convert_to(api_key, 'UTF8') FROM key_map`,
    );
    for (const table of ["request_templates", "requests"]) {
      await q.query(
        `UPDATE ${table} t SET api_key_id = m.id FROM key_map m WHERE t.api_key = m.api_key`,
      );
      await q.query(`ALTER TABLE ${table} DROP COLUMN api_key`);
    }
  }

  async down(q: QueryRunner): Promise<void> {
    // Only plaintext ('plain') keys can come back; encrypted ones need the key.
    for (const table of ["request_templates", "requests"]) {
      await q.query(`ALTER TABLE ${table} ADD COLUMN api_key text`);
      await q.query(
        `UPDATE ${table} t SET api_key = convert_from(k.sealed, 'UTF8')
         FROM api_keys k WHERE k.id = t.api_key_id AND k.key_id = 'plain'`,
      );
      await q.query(`ALTER TABLE ${table} DROP COLUMN api_key_id`);
    }
    await q.query(`DROP TABLE api_keys`);
  }
}
