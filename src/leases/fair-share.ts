/**
 * Fair share of a model's claims (docs/fair-share.md): which batches the next
 * `room` claims of one model come from. Pure: the inputs are read from
 * Postgres by the lease service, so no control plane keeps scheduler state.
 *
 * Order of the policy: priority class (highest first), then tenants of the
 * class (weighted: the next claim goes to the tenant with the fewest claims
 * per unit of weight), then the batches of that tenant (fewest claims),
 * then the oldest batch. A claim is one unit of share whether it is running
 * or buffered at a dispatcher.
 */

/** One batch with work or claims on the model. */
export interface ShareEntry {
  batchId: string;
  tenant: string;
  /** Priority class; higher is served first. */
  priority: number;
  /** The tenant's weight (≥ 1). */
  weight: number;
  /** Its requests of the model claimed now (running or buffered). */
  claims: number;
  /** Whether it has a ready pending request of the model (may take more). */
  ready: boolean;
  /** Creation time (ms): the tie-break, oldest first. */
  createdAt: number;
}

export type SharePolicy = "fair" | "fifo";

/**
 * Splits `room` claims among the ready entries. `capacity` bounds what a
 * batch can take (absent: unbounded, e.g. before its ready rows were counted).
 * Returns batch id → claims to take (only positive counts).
 *
 * "fifo" gives everything to the oldest ready batch first (the order of
 * before fair share: a batch runs after every older one).
 */
export function allocateClaims(
  room: number,
  entries: readonly ShareEntry[],
  policy: SharePolicy = "fair",
  capacity: ReadonlyMap<string, number> = new Map(),
): Map<string, number> {
  const out = new Map<string, number>();
  const cap = (e: ShareEntry) => capacity.get(e.batchId) ?? Number.POSITIVE_INFINITY;
  const ready = entries.filter((e) => e.ready && cap(e) > 0);
  if (room <= 0 || ready.length === 0) return out;

  if (policy === "fifo") {
    let left = room;
    for (const e of [...ready].sort(byAge)) {
      const n = Math.min(left, cap(e));
      if (n > 0) out.set(e.batchId, n);
      left -= n;
      if (left <= 0) break;
    }
    return out;
  }

  // Classes, highest first; a lower class gets only what higher ones cannot take.
  const classes = [...new Set(ready.map((e) => e.priority))].sort((a, b) => b - a);
  let left = room;
  for (const p of classes) {
    if (left <= 0) break;
    left -= fillClass(
      left,
      entries.filter((e) => e.priority === p),
      cap,
      out,
    );
  }
  return out;
}

interface TenantState {
  weight: number;
  /** Claims of the class's batches of this tenant, including those given here. */
  claims: number;
  batches: Array<{ e: ShareEntry; claims: number; given: number }>;
}

/** Water-fills `room` over one class; returns how many were given. */
function fillClass(
  room: number,
  entries: readonly ShareEntry[],
  cap: (e: ShareEntry) => number,
  out: Map<string, number>,
): number {
  const tenants = new Map<string, TenantState>();
  for (const e of entries) {
    let t = tenants.get(e.tenant);
    if (!t) {
      t = { weight: Math.max(1, e.weight), claims: 0, batches: [] };
      tenants.set(e.tenant, t);
    }
    // Claims of batches without ready work still count against their tenant.
    t.claims += e.claims;
    if (e.ready && cap(e) > 0) t.batches.push({ e, claims: e.claims, given: 0 });
  }
  const open = [...tenants.values()].filter((t) => t.batches.length > 0);
  for (const t of open) t.batches.sort((a, b) => byAge(a.e, b.e));
  let given = 0;
  while (given < room && open.length > 0) {
    // The tenant furthest below its weighted share; ties to the oldest batch.
    let best = 0;
    for (let i = 1; i < open.length; i++) {
      const a = open[i]!;
      const b = open[best]!;
      const d = a.claims * b.weight - b.claims * a.weight;
      if (d < 0 || (d === 0 && byAge(a.batches[0]!.e, b.batches[0]!.e) < 0)) best = i;
    }
    const t = open[best]!;
    // Within the tenant: the batch with the fewest claims; ties to the oldest.
    let bi = 0;
    for (let i = 1; i < t.batches.length; i++) {
      if (t.batches[i]!.claims < t.batches[bi]!.claims) bi = i;
    }
    const b = t.batches[bi]!;
    b.claims++;
    b.given++;
    t.claims++;
    given++;
    out.set(b.e.batchId, b.given);
    if (b.given >= cap(b.e)) {
      t.batches.splice(bi, 1);
      if (t.batches.length === 0) open.splice(best, 1);
    }
  }
  return given;
}

function byAge(a: ShareEntry, b: ShareEntry): number {
  return a.createdAt - b.createdAt || (a.batchId < b.batchId ? -1 : a.batchId > b.batchId ? 1 : 0);
}
