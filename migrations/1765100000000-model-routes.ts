import type { MigrationInterface, QueryRunner } from "typeorm";

/**
 * Model routes (docs/openai-api.md): where a model's requests go when a file
 * is uploaded without an endpoint, and with which upstream key. `tenant` ''
 * is the operator's route, used by every tenant without one of its own;
 * model '*' catches every model without a route. The key is a row of
 * api_keys (file_id null), encrypted like file keys and re-encrypted with
 * them by `fusillade secrets rotate`; replacing or deleting a route deletes it.
 */
export class ModelRoutes1765100000000 implements MigrationInterface {
  name = "ModelRoutes1765100000000";

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE model_routes (
        tenant text NOT NULL DEFAULT '',
        model text NOT NULL,
        endpoint text NOT NULL,
        -- Null: the route sends no key.
        api_key_id uuid REFERENCES api_keys (id),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant, model)
      )`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE model_routes`);
  }
}
