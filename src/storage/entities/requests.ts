/**
 * Requests and their change log (migrations 1764400000000 to 1765300000000).
 * The statement-level triggers `requests_after_update` and
 * `batches_after_delete` (which deletes a deleted batch's events: the log
 * has no foreign key) and the sequence `lease_token_seq` are outside what
 * entities describe; the schema builder leaves them alone.
 */
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
import { BatchEntity } from "./batches.js";

@Entity({ name: "requests" })
@Index("requests_pending_batch", ["model", "batchId", "createdAt", "line"], {
  where: "state = 'pending'",
})
@Index("requests_leased_batch", ["model", "batchId"], { where: "state = 'leased'" })
@Index("requests_retry_wait", ["model", "notBefore"], {
  where: "state = 'pending' AND not_before IS NOT NULL",
})
@Index("requests_batch_unsettled", ["batchId", "state", "line"], {
  where: "state IN ('pending', 'failed', 'canceled', 'expired')",
})
@Index("requests_batch_custom_id", ["batchId", "customId"], { where: "custom_id IS NOT NULL" })
@Unique("requests_batch_id_line_key", ["batchId", "line"])
@Check("requests_line_check", "line > 0")
@Check(
  "requests_state_check",
  "state IN ('pending', 'leased', 'completed', 'failed', 'canceled', 'expired')",
)
@Check("requests_attempt_check", "attempt >= 0")
@Check(
  "requests_lease_iff_leased",
  "(state = 'leased') = (lease_expires_at IS NOT NULL AND lease_holder IS NOT NULL)",
)
@Check("requests_leased_has_token", "state <> 'leased' OR lease_token IS NOT NULL")
@Check("requests_leased_attempted", "state <> 'leased' OR attempt > 0")
@Check(
  "requests_finished_iff_terminal",
  "(state IN ('completed', 'failed', 'canceled', 'expired')) = (finished_at IS NOT NULL)",
)
@Check(
  "requests_completed_has_response",
  "state <> 'completed' OR (response_status IS NOT NULL AND response_body IS NOT NULL AND error_code IS NULL)",
)
@Check(
  "requests_failure_has_error",
  "state NOT IN ('failed', 'canceled', 'expired') OR (error_code IS NOT NULL AND error_message IS NOT NULL)",
)
@Check("requests_not_before_only_pending", "state = 'pending' OR not_before IS NULL")
export class RequestEntity {
  @PrimaryGeneratedColumn("uuid", { primaryKeyConstraintName: "requests_pkey" }) id: string;
  @Column({ type: "uuid", name: "batch_id" })
  @ForeignKey(() => BatchEntity, { name: "requests_batch_id_fkey", onDelete: "CASCADE" })
  batchId: string;
  @Column({ type: "integer" }) line: number;
  @Column({ type: "text", name: "custom_id", nullable: true }) customId: string | null;
  @Column({ type: "text" }) endpoint: string;
  @Column({ type: "text" }) method: string;
  @Column({ type: "text" }) path: string;
  @Column({ type: "text" }) body: string;
  @Column({ type: "text" }) model: string;
  /** The sealed upstream key (`api_keys`); never selected by default. */
  @Column({ type: "uuid", name: "api_key_id", nullable: true, select: false })
  apiKeyId: string | null;
  @Column({ type: "text", default: "pending" }) state: string;
  @Column({ type: "integer", default: 0 }) attempt: number;
  /** Attempts that ended in backpressure (429, 503 with Retry-After): not counted against max_retries. */
  @Column({ type: "integer", name: "throttled_attempts", default: 0 }) throttledAttempts: number;
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
  @Column({ type: "timestamptz", name: "created_at", default: () => "now()" }) createdAt: Date;
  @Column({ type: "timestamptz", name: "updated_at", default: () => "now()" }) updatedAt: Date;
  @Column({ type: "timestamptz", name: "finished_at", nullable: true }) finishedAt: Date | null;
  @Column({ type: "text", default: "default" }) tenant: string;
}

/**
 * The append-only change log streams resume from; `seq` is allocated per
 * batch by the trigger. No foreign key: only the trigger writes it, right
 * after locking the batch row (docs/architecture.md).
 */
@Entity({ name: "request_events" })
export class RequestEventEntity {
  @PrimaryColumn({
    type: "uuid",
    name: "batch_id",
    primaryKeyConstraintName: "request_events_pkey",
  })
  batchId: string;
  @PrimaryColumn({ type: "bigint", primaryKeyConstraintName: "request_events_pkey" }) seq: string;
  @Column({ type: "uuid", name: "request_id" }) requestId: string;
  @Column({ type: "text" }) state: string;
  @Column({ type: "integer" }) attempt: number;
  @Column({ type: "timestamptz", name: "created_at", default: () => "now()" }) createdAt: Date;
  /** The request's upstream status after this change (null: none). */
  @Column({ type: "integer", name: "response_status", nullable: true })
  responseStatus: number | null;
  /** The request's error code after this change (null: none). */
  @Column({ type: "text", name: "error_code", nullable: true }) errorCode: string | null;
}
