/** Uploaded files and their request templates (migrations 1764400000000, 1764700000000, 1764800000000, 1765200000000). */
import {
  Check,
  Column,
  Entity,
  ForeignKey,
  Index,
  PrimaryColumn,
  PrimaryGeneratedColumn,
  Unique,
} from "typeorm";

@Entity({ name: "files" })
@Index("files_created", ["createdAt", "id"])
@Index("files_tenant", ["tenant", "createdAt", "id"])
@Unique("files_tenant_idempotency_key_key", ["tenant", "idempotencyKey"])
@Check("files_template_count_check", "template_count >= 0")
@Check("files_size_bytes_check", "size_bytes >= 0")
export class FileEntity {
  @PrimaryGeneratedColumn("uuid", { primaryKeyConstraintName: "files_pkey" }) id: string;
  @Column({ type: "text", default: "" }) filename: string;
  @Column({ type: "integer", name: "template_count" }) templateCount: number;
  @Column({ type: "bigint", name: "size_bytes" }) sizeBytes: string;
  @Column({ type: "text", array: true, default: () => "'{}'" }) models: string[];
  @Column({ type: "text", name: "idempotency_key", nullable: true }) idempotencyKey: string | null;
  @Column({ type: "timestamptz", name: "created_at", default: () => "now()" }) createdAt: Date;
  @Column({ type: "text", default: "default" }) tenant: string;
  /** Retention has started deleting it (src/storage/retention.ts). */
  @Column({ type: "timestamptz", name: "purging_at", nullable: true }) purgingAt: Date | null;
}

@Entity({ name: "request_templates" })
@Index("request_templates_custom_id", ["fileId", "customId"], {
  unique: true,
  where: "custom_id IS NOT NULL",
})
@Check("request_templates_line_check", "line > 0")
@Check("request_templates_endpoint_check", "endpoint <> ''")
@Check("request_templates_method_check", "method <> ''")
@Check("request_templates_model_check", "model <> ''")
export class RequestTemplateEntity {
  @PrimaryColumn({
    type: "uuid",
    name: "file_id",
    primaryKeyConstraintName: "request_templates_pkey",
  })
  @ForeignKey(() => FileEntity, { name: "request_templates_file_id_fkey", onDelete: "CASCADE" })
  fileId: string;
  @PrimaryColumn({ type: "integer", primaryKeyConstraintName: "request_templates_pkey" })
  line: number;
  @Column({ type: "text", name: "custom_id", nullable: true }) customId: string | null;
  @Column({ type: "text" }) endpoint: string;
  @Column({ type: "text" }) method: string;
  @Column({ type: "text" }) path: string;
  @Column({ type: "text" }) body: string;
  @Column({ type: "text" }) model: string;
  /** The sealed upstream key (`api_keys`); never selected by default. */
  @Column({ type: "uuid", name: "api_key_id", nullable: true, select: false })
  apiKeyId: string | null;
}
