/** Batches: counters kept by the requests trigger (migrations 1764400000000, 1764700000000, 1764900000000, 1765200000000). */
import { Check, Column, Entity, Index, PrimaryGeneratedColumn, Unique } from "typeorm";

const COUNTERS = [
  "pending_count",
  "leased_count",
  "completed_count",
  "failed_count",
  "canceled_count",
  "expired_count",
] as const;

@Entity({ name: "batches" })
@Index("batches_created", ["createdAt", "id"])
@Index("batches_file", ["fileId", "createdAt", "id"])
@Index("batches_tenant", ["tenant", "createdAt", "id"])
@Index("batches_finished", ["finishedAt"], { where: "finished_at IS NOT NULL" })
@Index("batches_unfinished_expiry", ["expiresAt"], { where: "finished_at IS NULL" })
@Unique("batches_tenant_idempotency_key_key", ["tenant", "idempotencyKey"])
@Check("batches_max_retries_check", "max_retries >= 0")
@Check("batches_initial_backoff_ms_check", "initial_backoff_ms >= 0")
@Check("batches_max_backoff_ms_check", "max_backoff_ms >= 0")
@Check("batches_total_count_check", "total_count >= 0")
@Check("batches_pending_count_check", "pending_count >= 0")
@Check("batches_leased_count_check", "leased_count >= 0")
@Check("batches_completed_count_check", "completed_count >= 0")
@Check("batches_failed_count_check", "failed_count >= 0")
@Check("batches_canceled_count_check", "canceled_count >= 0")
@Check("batches_expired_count_check", "expired_count >= 0")
@Check("batches_counts_add_up", `${COUNTERS.join(" + ")} = total_count`)
@Check(
  "batches_finished_iff_all_terminal",
  "(finished_at IS NOT NULL) = (pending_count + leased_count = 0)",
)
@Check("batches_priority_check", "priority BETWEEN -100 AND 100")
@Check("batches_retention_ms_check", "retention_ms >= 0")
export class BatchEntity {
  @PrimaryGeneratedColumn("uuid", { primaryKeyConstraintName: "batches_pkey" }) id: string;
  /** No foreign key: a batch outlives its file (its requests are a snapshot). */
  @Column({ type: "uuid", name: "file_id", nullable: true }) fileId: string | null;
  @Column({ type: "jsonb", default: () => "'{}'" }) metadata: Record<string, string>;
  @Column({ type: "text", name: "completion_window" }) completionWindow: string;
  @Column({ type: "integer", name: "max_retries" }) maxRetries: number;
  @Column({ type: "integer", name: "initial_backoff_ms" }) initialBackoffMs: number;
  @Column({ type: "integer", name: "max_backoff_ms" }) maxBackoffMs: number;
  @Column({ type: "text", name: "idempotency_key", nullable: true }) idempotencyKey: string | null;
  @Column({ type: "integer", name: "total_count" }) totalCount: number;
  @Column({ type: "integer", name: "pending_count" }) pendingCount: number;
  @Column({ type: "integer", name: "leased_count", default: 0 }) leasedCount: number;
  @Column({ type: "integer", name: "completed_count", default: 0 }) completedCount: number;
  @Column({ type: "integer", name: "failed_count", default: 0 }) failedCount: number;
  @Column({ type: "integer", name: "canceled_count", default: 0 }) canceledCount: number;
  @Column({ type: "integer", name: "expired_count", default: 0 }) expiredCount: number;
  @Column({ type: "bigint", name: "event_seq", default: 0 }) eventSeq: string;
  @Column({ type: "timestamptz", name: "created_at", default: () => "now()" }) createdAt: Date;
  @Column({ type: "timestamptz", name: "updated_at", default: () => "now()" }) updatedAt: Date;
  @Column({ type: "timestamptz", name: "expires_at" }) expiresAt: Date;
  @Column({ type: "timestamptz", name: "cancelling_at", nullable: true }) cancellingAt: Date | null;
  @Column({ type: "timestamptz", name: "finished_at", nullable: true }) finishedAt: Date | null;
  @Column({ type: "text", default: "default" }) tenant: string;
  /** Priority class: higher classes are served first (docs/fair-share.md). */
  @Column({ type: "smallint", default: 0 }) priority: number;
  /** The batch's own retention after it finishes (null: the server's; 0: kept until deleted). */
  @Column({ type: "bigint", name: "retention_ms", nullable: true }) retentionMs: string | null;
  /** Retention has started deleting it (src/storage/retention.ts). */
  @Column({ type: "timestamptz", name: "purging_at", nullable: true }) purgingAt: Date | null;
  /** Events with seq ≤ this may have been dropped (docs/streaming.md). */
  @Column({ type: "bigint", name: "events_pruned_through", default: 0 })
  eventsPrunedThrough: string;
}
