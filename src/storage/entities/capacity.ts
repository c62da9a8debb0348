/**
 * Per-model limits, slot grants and tenant weights (migrations 1764400000000,
 * 1764500000000, 1764900000000, 1765000000000). Slot grants change only in the plpgsql
 * function `fusillade_slots()` (docs/capacity-leases.md); the entity is here
 * so that the schema test covers the table.
 */
import { Check, Column, Entity, PrimaryColumn } from "typeorm";

@Entity({ name: "model_limits" })
@Check("model_limits_max_in_flight_check", "max_in_flight >= 0")
@Check("model_limits_rpm_check", "rpm > 0")
@Check("model_limits_tpm_check", "tpm > 0")
export class ModelLimitEntity {
  @PrimaryColumn({ type: "text", primaryKeyConstraintName: "model_limits_pkey" }) model: string;
  /** null: the server's default limit applies. */
  @Column({ type: "integer", name: "max_in_flight", nullable: true }) maxInFlight: number | null;
  /** A 429 hold: no slots are granted for the model before this. */
  @Column({ type: "timestamptz", name: "hold_until", nullable: true }) holdUntil: Date | null;
  @Column({ type: "timestamptz", name: "updated_at", default: () => "now()" }) updatedAt: Date;
  /** Requests per minute, held fleet-wide (docs/pacing.md); null: no rate. */
  @Column({ type: "integer", nullable: true }) rpm: number | null;
  /** Tokens per minute, held fleet-wide; null: no rate. */
  @Column({ type: "integer", nullable: true }) tpm: number | null;
}

/** One dispatcher's slots of one model, fenced by `token`. */
@Entity({ name: "slot_grants" })
@Check("slot_grants_slots_check", "slots >= 0")
@Check("slot_grants_want_check", "want >= 0")
export class SlotGrantEntity {
  @PrimaryColumn({ type: "text", primaryKeyConstraintName: "slot_grants_pkey" }) model: string;
  @PrimaryColumn({ type: "text", primaryKeyConstraintName: "slot_grants_pkey" }) holder: string;
  @Column({ type: "bigint" }) token: string;
  @Column({ type: "integer" }) slots: number;
  @Column({ type: "integer" }) want: number;
  @Column({ type: "timestamptz", name: "expires_at" }) expiresAt: Date;
  @Column({ type: "timestamptz", name: "created_at", default: () => "now()" }) createdAt: Date;
  @Column({ type: "timestamptz", name: "updated_at", default: () => "now()" }) updatedAt: Date;
  /** How the holder paces the model, as its last Sync said (PacingView); null before its first attempt. */
  @Column({ type: "jsonb", nullable: true }) pacing: unknown;
}

/** A tenant's weight in fair share (docs/fair-share.md); a tenant without a row weighs 1. */
@Entity({ name: "tenants" })
@Check("tenants_weight_check", "weight BETWEEN 1 AND 1000")
export class TenantEntity {
  @PrimaryColumn({ type: "text", primaryKeyConstraintName: "tenants_pkey" }) name: string;
  @Column({ type: "integer", default: 1 }) weight: number;
  @Column({ type: "timestamptz", name: "updated_at", default: () => "now()" }) updatedAt: Date;
}

/**
 * One dispatcher's share of one model's rates (docs/pacing.md, "Rate grants"). Changed
 * only by the plpgsql function `fusillade_rates()`; a cut share stays counted until its
 * holder says it spends the new one, or its grant expires (the `*_counted` columns).
 */
@Entity({ name: "rate_shares" })
@Check("rate_shares_want_check", "want >= 0")
@Check("rate_shares_token_want_check", "token_want >= 0")
@Check("rate_shares_rpm_check", "rpm >= 0")
@Check("rate_shares_tpm_check", "tpm >= 0")
export class RateShareEntity {
  @PrimaryColumn({ type: "text", primaryKeyConstraintName: "rate_shares_pkey" }) model: string;
  @PrimaryColumn({ type: "text", primaryKeyConstraintName: "rate_shares_pkey" }) holder: string;
  @Column({ type: "integer" }) want: number;
  @Column({ type: "bigint", name: "token_want" }) tokenWant: string;
  @Column({ type: "integer" }) rpm: number;
  @Column({ type: "integer" }) tpm: number;
  @Column({ type: "integer", name: "rpm_counted", default: 0 }) rpmCounted: number;
  @Column({ type: "timestamptz", name: "rpm_counted_until", nullable: true })
  rpmCountedUntil: Date | null;
  @Column({ type: "integer", name: "tpm_counted", default: 0 }) tpmCounted: number;
  @Column({ type: "timestamptz", name: "tpm_counted_until", nullable: true })
  tpmCountedUntil: Date | null;
  @Column({ type: "timestamptz", name: "expires_at" }) expiresAt: Date;
}
