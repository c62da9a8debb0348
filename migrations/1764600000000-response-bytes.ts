import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * Response bodies are kept as the bytes the upstream sent (`bytea`), not as
 * text: Postgres text cannot hold a NUL byte or bytes that are not UTF-8, and
 * one such body used to turn a finished, paid-for request into a failure. The
 * content type stays in `response_headers`. Results render the bytes safely
 * (src/domain/results.ts).
 */
export class ResponseBytes1764600000000 implements MigrationInterface {
  name = "ResponseBytes1764600000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(
      `ALTER TABLE requests ALTER COLUMN response_body TYPE bytea
         USING convert_to(response_body, 'UTF8')`,
    );
  }

  async down(q: QueryRunner): Promise<void> {
    // Text cannot hold every byte string: bodies come back in the lossless 'escape' form.
    await q.query(
      `ALTER TABLE requests ALTER COLUMN response_body TYPE text
         USING encode(response_body, 'escape')`,
    );
  }
}
