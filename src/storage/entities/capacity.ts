/**
 * Per-model limits, slot grants and tenant weights (migrations 1764400000000,
 * 1764500000000, 1764900000000). Slot grants change only in the plpgsql
 * function `fusillade_slots()` (docs/capacity-leases.md); the entity is here
 * so that the schema test covers the table.
 */
import { Check, Column, Entity, PrimaryColumn } from "typeorm";

@Entity({ name: "model_limits" })
@Check("model_limits_max_in_flight_check", "max_in_flight >= 0")
export class ModelLimitEntity {
  @PrimaryColumn({ type: "text", primaryKeyConstraintName: "model_limits_pkey" }) model: string;
  /** null: the server's default limit applies. */
  @Column({ type: "integer", name: "max_in_flight", nullable: true }) maxInFlight: number | null;
  /** A 429 hold: no slots are granted for the model before this. */
  @Column({ type: "timestamptz", name: "hold_until", nullable: true }) holdUntil: Date | null;
  @Column({ type: "timestamptz", name: "updated_at", default: () => "now()" }) updatedAt: Date;
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
}

/** A tenant's weight in fair share (docs/fair-share.md); a tenant without a row weighs 1. */
@Entity({ name: "tenants" })
@Check("tenants_weight_check", "weight BETWEEN 1 AND 1000")
export class TenantEntity {
  @PrimaryColumn({ type: "text", primaryKeyConstraintName: "tenants_pkey" }) name: string;
  @Column({ type: "integer", default: 1 }) weight: number;
  @Column({ type: "timestamptz", name: "updated_at", default: () => "now()" }) updatedAt: Date;
}
