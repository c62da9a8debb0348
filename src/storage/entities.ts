/**
 * TypeORM entities: the schema's shape for plain reads and CRUD. The schema
 * itself is owned by migrations/ (never synchronize); hot-path statements
 * are hand-written in src/storage/queries and src/leases.
 */
import { Column, Entity, PrimaryColumn, PrimaryGeneratedColumn } from "typeorm";

@Entity({ name: "files" })
export class FileEntity {
  @PrimaryGeneratedColumn("uuid") id: string;
  @Column({ type: "text" }) filename: string;
  @Column({ type: "integer", name: "template_count" }) templateCount: number;
  @Column({ type: "bigint", name: "size_bytes" }) sizeBytes: string;
  @Column({ type: "text", array: true }) models: string[];
  @Column({ type: "text", name: "idempotency_key", nullable: true }) idempotencyKey: string | null;
  @Column({ type: "timestamptz", name: "created_at" }) createdAt: Date;
  @Column({ type: "text" }) tenant: string;
}

@Entity({ name: "request_templates" })
export class RequestTemplateEntity {
  @PrimaryColumn({ type: "uuid", name: "file_id" }) fileId: string;
  @PrimaryColumn({ type: "integer" }) line: number;
  @Column({ type: "text", name: "custom_id", nullable: true }) customId: string | null;
  @Column({ type: "text" }) endpoint: string;
  @Column({ type: "text" }) method: string;
  @Column({ type: "text" }) path: string;
  @Column({ type: "text" }) body: string;
  @Column({ type: "text" }) model: string;
  @Column({ type: "uuid", name: "api_key_id", nullable: true, select: false })
  apiKeyId: string | null;
}

@Entity({ name: "batches" })
export class BatchEntity {
  @PrimaryGeneratedColumn("uuid") id: string;
  @Column({ type: "uuid", name: "file_id", nullable: true }) fileId: string | null;
  @Column({ type: "jsonb" }) metadata: Record<string, string>;
  @Column({ type: "text", name: "completion_window" }) completionWindow: string;
  @Column({ type: "integer", name: "max_retries" }) maxRetries: number;
  @Column({ type: "integer", name: "initial_backoff_ms" }) initialBackoffMs: number;
  @Column({ type: "integer", name: "max_backoff_ms" }) maxBackoffMs: number;
  @Column({ type: "text", name: "idempotency_key", nullable: true }) idempotencyKey: string | null;
  @Column({ type: "integer", name: "total_count" }) totalCount: number;
  @Column({ type: "integer", name: "pending_count" }) pendingCount: number;
  @Column({ type: "integer", name: "leased_count" }) leasedCount: number;
  @Column({ type: "integer", name: "completed_count" }) completedCount: number;
  @Column({ type: "integer", name: "failed_count" }) failedCount: number;
  @Column({ type: "integer", name: "canceled_count" }) canceledCount: number;
  @Column({ type: "integer", name: "expired_count" }) expiredCount: number;
  @Column({ type: "bigint", name: "event_seq" }) eventSeq: string;
  @Column({ type: "timestamptz", name: "created_at" }) createdAt: Date;
  @Column({ type: "timestamptz", name: "updated_at" }) updatedAt: Date;
  @Column({ type: "timestamptz", name: "expires_at" }) expiresAt: Date;
  @Column({ type: "timestamptz", name: "cancelling_at", nullable: true }) cancellingAt: Date | null;
  @Column({ type: "timestamptz", name: "finished_at", nullable: true }) finishedAt: Date | null;
  @Column({ type: "text" }) tenant: string;
  /** Priority class: higher classes are served first (docs/fair-share.md). */
  @Column({ type: "smallint" }) priority: number;
}

@Entity({ name: "requests" })
export class RequestEntity {
  @PrimaryGeneratedColumn("uuid") id: string;
  @Column({ type: "uuid", name: "batch_id" }) batchId: string;
  @Column({ type: "integer" }) line: number;
  @Column({ type: "text", name: "custom_id", nullable: true }) customId: string | null;
  @Column({ type: "text" }) endpoint: string;
  @Column({ type: "text" }) method: string;
  @Column({ type: "text" }) path: string;
  @Column({ type: "text" }) body: string;
  @Column({ type: "text" }) model: string;
  @Column({ type: "uuid", name: "api_key_id", nullable: true, select: false })
  apiKeyId: string | null;
  @Column({ type: "text" }) state: string;
  @Column({ type: "integer" }) attempt: number;
  @Column({ type: "integer", name: "throttled_attempts" }) throttledAttempts: number;
  @Column({ type: "timestamptz", name: "not_before", nullable: true }) notBefore: Date | null;
  @Column({ type: "bigint", name: "lease_token", nullable: true }) leaseToken: string | null;
  @Column({ type: "text", name: "lease_holder", nullable: true }) leaseHolder: string | null;
  @Column({ type: "timestamptz", name: "lease_expires_at", nullable: true })
  leaseExpiresAt: Date | null;
  @Column({ type: "integer", name: "response_status", nullable: true })
  responseStatus: number | null;
  @Column({ type: "jsonb", name: "response_headers", nullable: true })
  responseHeaders: Record<string, string> | null;
  @Column({ type: "bytea", name: "response_body", nullable: true }) responseBody: Buffer | null;
  @Column({ type: "text", name: "error_code", nullable: true }) errorCode: string | null;
  @Column({ type: "text", name: "error_message", nullable: true }) errorMessage: string | null;
  @Column({ type: "timestamptz", name: "created_at" }) createdAt: Date;
  @Column({ type: "timestamptz", name: "updated_at" }) updatedAt: Date;
  @Column({ type: "timestamptz", name: "finished_at", nullable: true }) finishedAt: Date | null;
  @Column({ type: "text" }) tenant: string;
}

@Entity({ name: "request_events" })
export class RequestEventEntity {
  @PrimaryColumn({ type: "uuid", name: "batch_id" }) batchId: string;
  @PrimaryColumn({ type: "bigint" }) seq: string;
  @Column({ type: "uuid", name: "request_id" }) requestId: string;
  @Column({ type: "text" }) state: string;
  @Column({ type: "integer" }) attempt: number;
  @Column({ type: "timestamptz", name: "created_at" }) createdAt: Date;
}

@Entity({ name: "model_limits" })
export class ModelLimitEntity {
  @PrimaryColumn({ type: "text" }) model: string;
  @Column({ type: "integer", name: "max_in_flight", nullable: true }) maxInFlight: number | null;
  @Column({ type: "timestamptz", name: "hold_until", nullable: true }) holdUntil: Date | null;
  @Column({ type: "integer", nullable: true }) rpm: number | null;
  @Column({ type: "integer", nullable: true }) tpm: number | null;
  @Column({ type: "timestamptz", name: "updated_at" }) updatedAt: Date;
}

/** A tenant's weight in fair share (docs/fair-share.md); a tenant without a row weighs 1. */
@Entity({ name: "tenants" })
export class TenantEntity {
  @PrimaryColumn({ type: "text" }) name: string;
  @Column({ type: "integer" }) weight: number;
  @Column({ type: "timestamptz", name: "updated_at" }) updatedAt: Date;
}

@Entity({ name: "api_tokens" })
export class ApiTokenEntity {
  @PrimaryGeneratedColumn("uuid") id: string;
  @Column({ type: "text" }) name: string;
  @Column({ type: "text" }) role: string;
  @Column({ type: "text", nullable: true }) tenant: string | null;
  @Column({ type: "bytea", select: false }) hash: Buffer;
  @Column({ type: "timestamptz", name: "created_at" }) createdAt: Date;
  @Column({ type: "timestamptz", name: "revoked_at", nullable: true }) revokedAt: Date | null;
}

@Entity({ name: "api_keys" })
export class ApiKeyEntity {
  @PrimaryGeneratedColumn("uuid") id: string;
  @Column({ type: "uuid", name: "file_id", nullable: true }) fileId: string | null;
  @Column({ type: "text", name: "key_id" }) keyId: string;
  @Column({ type: "bytea", select: false }) iv: Buffer;
  @Column({ type: "bytea", select: false }) sealed: Buffer;
  @Column({ type: "timestamptz", name: "created_at" }) createdAt: Date;
}

export const ENTITIES = [
  ApiKeyEntity,
  ApiTokenEntity,
  FileEntity,
  RequestTemplateEntity,
  BatchEntity,
  RequestEntity,
  RequestEventEntity,
  ModelLimitEntity,
  TenantEntity,
];
