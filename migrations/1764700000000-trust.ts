import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * Trust (docs/trust.md): API tokens, kept only as hashes, each with a role
 * and, for clients, a tenant; files, batches and requests carry the tenant
 * they belong to (rows from before are the `default` tenant's).
 */
export class Trust1764700000000 implements MigrationInterface {
  name = "Trust1764700000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE api_tokens (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        name text NOT NULL DEFAULT '' CHECK (octet_length(name) <= 200),
        role text NOT NULL CHECK (role IN ('client', 'dispatcher', 'admin')),
        tenant text CHECK (octet_length(tenant) BETWEEN 1 AND 200),
        -- SHA-256 of the token; the token itself is never stored.
        hash bytea NOT NULL UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz,
        CONSTRAINT api_tokens_client_has_tenant CHECK ((role = 'client') = (tenant IS NOT NULL))
      )`);
    for (const table of ["files", "batches", "requests"]) {
      // A constant default: no table rewrite.
      await q.query(`ALTER TABLE ${table} ADD COLUMN tenant text NOT NULL DEFAULT 'default'`);
    }
    // A request_id is a tenant's own: another tenant's must neither clash nor be returned.
    for (const table of ["files", "batches"]) {
      await q.query(`ALTER TABLE ${table} DROP CONSTRAINT ${table}_idempotency_key_key`);
      await q.query(
        `ALTER TABLE ${table} ADD CONSTRAINT ${table}_tenant_idempotency_key_key UNIQUE (tenant, idempotency_key)`,
      );
    }
    await q.query(`CREATE INDEX files_tenant ON files (tenant, created_at, id)`);
    await q.query(`CREATE INDEX batches_tenant ON batches (tenant, created_at, id)`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP INDEX batches_tenant`);
    await q.query(`DROP INDEX files_tenant`);
    for (const table of ["files", "batches"]) {
      await q.query(`ALTER TABLE ${table} DROP CONSTRAINT ${table}_tenant_idempotency_key_key`);
      await q.query(
        `ALTER TABLE ${table} ADD CONSTRAINT ${table}_idempotency_key_key UNIQUE (idempotency_key)`,
      );
    }
    for (const table of ["files", "batches", "requests"]) {
      await q.query(`ALTER TABLE ${table} DROP COLUMN tenant`);
    }
    await q.query(`DROP TABLE api_tokens`);
  }
}
