/** Model routes (docs/openai-api.md; migration 1765100000000). */
import { Column, Entity, ForeignKey, PrimaryColumn } from "typeorm";
import { ApiKeyEntity } from "./trust.js";

/** Where a model's requests go when a file names no endpoint; '' tenant = the operator's. */
@Entity({ name: "model_routes" })
export class ModelRouteEntity {
  @PrimaryColumn({ type: "text", default: "", primaryKeyConstraintName: "model_routes_pkey" })
  tenant: string;
  /** A model name, or '*' for every model without a route of its own. */
  @PrimaryColumn({ type: "text", primaryKeyConstraintName: "model_routes_pkey" }) model: string;
  @Column({ type: "text" }) endpoint: string;
  /** The route's key, a row of api_keys (file_id null); null: no key. */
  @Column({ type: "uuid", name: "api_key_id", nullable: true })
  @ForeignKey(() => ApiKeyEntity, { name: "model_routes_api_key_id_fkey" })
  apiKeyId: string | null;
  @Column({ type: "timestamptz", name: "updated_at", default: () => "now()" }) updatedAt: Date;
}
