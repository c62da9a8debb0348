/** API tokens and sealed upstream keys (docs/trust.md; migrations 1764700000000, 1764800000000). */
import { Check, Column, Entity, Index, PrimaryGeneratedColumn, Unique } from "typeorm";

/** A token is kept only as its SHA-256; the secret is shown once, when it is made. */
@Entity({ name: "api_tokens" })
@Unique("api_tokens_hash_key", ["hash"])
@Check("api_tokens_name_check", "octet_length(name) <= 200")
@Check("api_tokens_role_check", "role IN ('client', 'dispatcher', 'admin')")
@Check("api_tokens_tenant_check", "octet_length(tenant) BETWEEN 1 AND 200")
@Check("api_tokens_client_has_tenant", "(role = 'client') = (tenant IS NOT NULL)")
export class ApiTokenEntity {
  @PrimaryGeneratedColumn("uuid", { primaryKeyConstraintName: "api_tokens_pkey" }) id: string;
  @Column({ type: "text", default: "" }) name: string;
  @Column({ type: "text" }) role: string;
  /** A client's tenant; null for dispatchers and admins. */
  @Column({ type: "text", nullable: true }) tenant: string | null;
  @Column({ type: "bytea", select: false }) hash: Buffer;
  @Column({ type: "timestamptz", name: "created_at", default: () => "now()" }) createdAt: Date;
  @Column({ type: "timestamptz", name: "revoked_at", nullable: true }) revokedAt: Date | null;
}

/** An upstream API key, encrypted under the key named by `key_id` ('plain': not yet). */
@Entity({ name: "api_keys" })
@Index("api_keys_key_id", ["keyId"])
@Index("api_keys_file", ["fileId"])
export class ApiKeyEntity {
  @PrimaryGeneratedColumn("uuid", { primaryKeyConstraintName: "api_keys_pkey" }) id: string;
  /** The file whose templates use it; no foreign key (requests keep it after the file goes). */
  @Column({ type: "uuid", name: "file_id", nullable: true }) fileId: string | null;
  @Column({ type: "text", name: "key_id" }) keyId: string;
  @Column({ type: "bytea", select: false }) iv: Buffer;
  @Column({ type: "bytea", select: false }) sealed: Buffer;
  @Column({ type: "timestamptz", name: "created_at", default: () => "now()" }) createdAt: Date;
}
