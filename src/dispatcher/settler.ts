/**
 * The end of every held claim: its attempt is over (or never started), so its
 * report goes to the reporter, and once the control plane answered (or the
 * report was dropped) the claim leaves the lease table. Every part that lets
 * go of a claim goes through here: the attempt runner with an outcome, and
 * the intake, the fencer and shutdown with an unsent release.
 *
 * Owns the counts of releases and of the control plane's dispositions.
 */
import type { Disposition, Report } from "./lease-client.js";
import type { HeldLease } from "./lease-table.js";
import type { Shared } from "./parts.js";

/** Where reports go: the reporter's `submit`. */
export interface ReportSink {
  /** Resolves with the control plane's answer; undefined when dropped unanswered. */
  submit(report: Report, expiresAt?: () => number): Promise<Disposition | undefined>;
}

/** What the settler counts. */
export interface SettlerCounts {
  releases: number;
  dispositions: Record<Disposition | "unreported", number>;
}

export class Settler {
  readonly counts: SettlerCounts = {
    releases: 0,
    dispositions: { recorded: 0, requeued: 0, lost: 0, unreported: 0 },
  };

  constructor(
    private readonly shared: Shared,
    private readonly reports: ReportSink,
    /** The fence margin for a TTL: a claim expires at its fence plus this. */
    private readonly marginFor: (ttlMs: number) => number,
  ) {}

  /** Gives a claim back unsent: its request never went upstream here (its attempt is returned). */
  releaseUnsent(entry: HeldLease, reason: string): Promise<void> {
    return this.settle(entry, { ref: entry.ref, kind: "release", reason, unsent: true });
  }

  /** Reports `report` for `entry`, then lets go of it. */
  async settle(entry: HeldLease, report: Report): Promise<void> {
    const { table, metrics, log } = this.shared;
    table.toReporting(entry);
    if (report.kind === "release") {
      this.counts.releases++;
      metrics.claims("released");
    }
    // Past its real expiry (the fence plus its margin) the report could only be LOST.
    const disposition = await this.reports.submit(
      report,
      () => entry.deadline + this.marginFor(entry.lease.ttlMs),
    );
    this.counts.dispositions[disposition ?? "unreported"]++;
    if (log.isLevelEnabled("debug")) {
      log.debug(
        {
          requestId: entry.ref.requestId,
          model: entry.lease.model,
          attempt: entry.lease.attempt,
          report: report.kind === "release" ? "release" : report.outcome.kind,
          status: report.kind === "outcome" ? report.outcome.statusCode : undefined,
          disposition,
        },
        "request done",
      );
    }
    table.remove(entry);
  }
}
