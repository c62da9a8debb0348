/**
 * Model routes applied to an upload without an endpoint (docs/openai-api.md):
 * each distinct model's route is looked up once, while the content streams
 * in (a model without a route stops the upload at its first line), and the
 * endpoints and keys are filled in after the spool, so that no key is ever
 * written to the spool file.
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

  /** `rows` unchanged; throws at the first row whose model has no route. */
  async *check(rows: AsyncIterable<TemplateRow>): AsyncGenerator<TemplateRow> {
    for await (const row of rows) {
      if (!this.#routes.has(row.model)) {
        const route = await routeFor(this.db, this.keyring, this.tenant, row.model);
        if (route === undefined) {
          throw new InvalidArgumentError(
            "body.model",
            `no route for model ${JSON.stringify(row.model)}: give an endpoint, or ask an admin for \`fusillade routes set ${row.model} --endpoint URL\` (or a '*' route)`,
            row.line,
          );
        }
        this.#routes.set(row.model, route);
      }
      yield row;
    }
  }

  /** `rows` (checked earlier) with each model's endpoint and key set. */
  async *fill(rows: AsyncIterable<TemplateRow>): AsyncGenerator<TemplateRow> {
    for await (const row of rows) {
      const route = this.#routes.get(row.model)!;
      yield { ...row, endpoint: route.endpoint, apiKey: route.apiKey };
    }
  }
}
