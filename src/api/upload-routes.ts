/**
 * Model routes applied to an upload without an endpoint (docs/openai-api.md):
 * each distinct model's route is looked up once, while the content streams
 * in (a model without a route stops the upload at its first line). The keys
 * stay in memory: the spool holds only their ids (src/storage/template-spool.ts).
 */
import type { Keyring } from "../auth/secrets.js";
import { InvalidArgumentError } from "../domain/errors.js";
import type { TemplateRow } from "../domain/templates.js";
import type { Db } from "../storage/db.js";
import { type ResolvedRoute, routeFor } from "../storage/model-routes.js";

/** The routes of one upload's models, looked up once each. */
export class UploadRoutes {
  readonly #routes = new Map<string, ResolvedRoute>();

  constructor(
    private readonly db: Db,
    private readonly keyring: Keyring,
    private readonly tenant: string,
  ) {}

  /**
   * `rows` with each model's endpoint and key set from its route (looked up
   * once per model); throws at the first row whose model has no route.
   */
  async *fill(rows: AsyncIterable<TemplateRow>): AsyncGenerator<TemplateRow> {
    for await (const row of rows) {
      let route = this.#routes.get(row.model);
      if (route === undefined) {
        route = await routeFor(this.db, this.keyring, this.tenant, row.model);
        if (route === undefined) {
          throw new InvalidArgumentError(
            "body.model",
            `no route for model ${JSON.stringify(row.model)}: give an endpoint, or ask an admin for \`fusillade routes set ${row.model} --endpoint URL\` (or a '*' route)`,
            row.line,
          );
        }
        this.#routes.set(row.model, route);
      }
      yield { ...row, endpoint: route.endpoint, apiKey: route.apiKey };
    }
  }
}
