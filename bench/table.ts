/**
 * The bench's closing table: one row per figure, Fusillade's value beside
 * the ceiling measured in the same run and their ratio. Reads the results
 * object that is also written to bench/results/latest.json.
 */

/** The value at a dotted path of `o` ("dispatch.0.fusillade.seconds"). */
function at(o: unknown, dotted: string): unknown {
  let v = o;
  for (const k of dotted.split(".")) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<string, unknown>)[k];
  }
  return v;
}

function fmt(v: unknown, unit = ""): string {
  if (typeof v !== "number" || Number.isNaN(v)) return "–";
  const s = Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en-US") : String(v);
  return `${s}${unit}`;
}

type Row = [scenario: string, figure: string, fusillade: string, ceiling: string, ratio: string];

function rows(r: unknown): Row[] {
  const out: Row[] = [];
  const n = (p: string) => fmt(at(r, p));
  out.push([
    "ingest",
    `UploadFile ${n("ingest.lines")} lines / ${n("ingest.mib")} MiB (ceiling: COPY)`,
    `${n("ingest.upload_file.seconds")} s, ${n("ingest.upload_file.lines_per_s")} lines/s`,
    `${n("ingest.copy.seconds")} s, ${n("ingest.copy.lines_per_s")} lines/s`,
    `${n("ingest.ratio_to_copy")} of COPY's rate`,
  ]);
  const b = "batch_start";
  out.push([
    "batch start",
    `CreateBatch of ${n(`${b}.create_batch.requests`)} (ceiling: same snapshot in SQL)`,
    `${n(`${b}.create_batch.create_batch_s`)} s`,
    `${n(`${b}.create_batch.sql_snapshot_s`)} s`,
    `${n(`${b}.create_batch.ratio_to_sql`)} of SQL's rate`,
  ]);
  out.push([
    "batch start",
    `CreateBatch → first upstream call, p50 / p99 (n=${n(`${b}.first_call.n`)}; ceiling: a direct request)`,
    `${n(`${b}.first_call.p50_ms`)} / ${n(`${b}.first_call.p99_ms`)} ms`,
    `${n(`${b}.first_call.ceiling_direct_request.p50_ms`)} / ${n(`${b}.first_call.ceiling_direct_request.p99_ms`)} ms`,
    `p50 × ${n(`${b}.first_call.ratio_p50_to_ceiling`)}`,
  ]);
  out.push([
    "batch start",
    `response → next request, limit 1, p50 / p99 (n=${n(`${b}.turnaround.n`)}; ceiling: one undici loop)`,
    `${n(`${b}.turnaround.p50_ms`)} / ${n(`${b}.turnaround.p99_ms`)} ms`,
    `${n(`${b}.turnaround.ceiling_undici_loop.p50_ms`)} / ${n(`${b}.turnaround.ceiling_undici_loop.p99_ms`)} ms`,
    `p50 × ${n(`${b}.turnaround.ratio_p50_to_ceiling`)}`,
  ]);
  const cases = (at(r, "dispatch") as unknown[] | undefined) ?? [];
  cases.forEach((_, i) => {
    const d = `dispatch.${i}`;
    const title = `${n(`${d}.requests`)} req, 2 models × limit ${n(`${d}.limit_per_model`)}, ${n(`${d}.upstream_latency_ms`)} ms upstream`;
    out.push([
      `dispatch ${at(r, `${d}.case`)}`,
      `${title}: wall, throughput (ceiling: no database)`,
      `${n(`${d}.fusillade.seconds`)} s, ${n(`${d}.fusillade.requests_per_s`)} req/s`,
      `${n(`${d}.ceiling.seconds`)} s, ${n(`${d}.ceiling.requests_per_s`)} req/s`,
      `${n(`${d}.ratio_to_ceiling`)} of ceiling`,
    ]);
    const models = Object.keys((at(r, `${d}.fusillade.upstream`) as object | undefined) ?? {});
    const per = (side: string, f: string) =>
      models.map((m) => n(`${d}.${side}.upstream.${m}.${f}`)).join(", ");
    out.push([
      `dispatch ${at(r, `${d}.case`)}`,
      "CreateBatch → finished only (no upload, no results), throughput",
      `${n(`${d}.fusillade.create_to_finished_s`)} s, ${n(`${d}.fusillade.create_to_finished_requests_per_s`)} req/s`,
      "",
      `${n(`${d}.create_to_finished_ratio_to_ceiling`)} of ceiling`,
    ]);
    out.push([
      `dispatch ${at(r, `${d}.case`)}`,
      "peak in flight per model (≤ limit)",
      per("fusillade", "peak_in_flight"),
      per("ceiling", "peak_in_flight"),
      "",
    ]);
    out.push([
      `dispatch ${at(r, `${d}.case`)}`,
      "mean in flight while busy per model, share of limit",
      per("fusillade", "limit_use"),
      per("ceiling", "limit_use"),
      "",
    ]);
  });
  out.push([
    "memory",
    `dispatcher RSS holding ${n("memory.held_in_flight")} of ${n("memory.concurrency")} (ceiling: bare undici process), idle / peak`,
    `${n("memory.rss_mib.dispatcher.idle")} / ${n("memory.rss_mib.dispatcher.peak")} MiB`,
    `${n("memory.ceiling.rss_mib.idle")} / ${n("memory.ceiling.rss_mib.peak")} MiB, holding ${n("memory.ceiling.held_in_flight")}`,
    `peak × ${n("memory.dispatcher_peak_ratio_to_ceiling")}`,
  ]);
  out.push([
    "memory",
    "RSS above idle per request held",
    `${n("memory.kib_per_request_held.dispatcher")} KiB`,
    `${n("memory.kib_per_request_held.ceiling")} KiB`,
    `× ${n("memory.dispatcher_kib_per_request_ratio_to_ceiling")}`,
  ]);
  out.push([
    "memory",
    "control plane RSS (separate process), idle / peak",
    `${n("memory.rss_mib.control_plane.idle")} / ${n("memory.rss_mib.control_plane.peak")} MiB`,
    "",
    `peak × ${n("memory.control_plane_peak_ratio_to_idle")} of idle`,
  ]);
  out.push([
    "reads",
    `GetBatchStatus, ${n("reads.requests")}-request batch, p50 / p99 (ceiling: SQL)`,
    `${n("reads.get_batch_status.p50_ms")} / ${n("reads.get_batch_status.p99_ms")} ms`,
    `${n("reads.get_batch_status.sql.p50_ms")} / ${n("reads.get_batch_status.sql.p99_ms")} ms`,
    `p50 × ${n("reads.get_batch_status.ratio_p50_to_sql")}`,
  ]);
  const l = "reads.list_batch_requests_failed";
  out.push([
    "reads",
    "ListBatchRequests, 100 failed a page, p50 / p99 (ceiling: SQL on the state index)",
    `${n(`${l}.p50_ms`)} / ${n(`${l}.p99_ms`)} ms`,
    `${n(`${l}.sql.p50_ms`)} / ${n(`${l}.sql.p99_ms`)} ms`,
    `p50 × ${n(`${l}.ratio_p50_to_sql`)}`,
  ]);
  const g = "reads.get_batch_results";
  // Each read of the batch's results, beside the SQL statement of the same run.
  const resultReads: Array<[string, string]> = [
    [
      `GetBatchResults read to the end, ${n(`${g}.lines_per_message`)} lines an answer (as the CLI), ${n(`${g}.requests`)} completed, ${n(`${g}.body_mib`)} MiB of bodies, median of ${n(`${g}.rounds`)} (ceiling: one SQL statement)`,
      g,
    ],
    [
      "GetBatchResults, the same, a line an answer (lines_per_message unset)",
      `${g}.one_line_a_message`,
    ],
    [
      "GetBatchResults' transport alone: a line an answer from a bare Connect server, no database",
      `${g}.transport_only`,
    ],
  ];
  for (const [label, at] of resultReads) {
    out.push([
      "reads",
      label,
      `${n(`${at}.seconds`)} s, ${n(`${at}.lines_per_s`)} lines/s`,
      `${n(`${g}.sql.seconds`)} s, ${n(`${g}.sql.lines_per_s`)} lines/s`,
      `${n(`${at}.ratio_to_sql`)} of SQL's rate`,
    ]);
  }
  const what: Record<string, string> = {
    deep: `1 batch of ${n("claims.backlog")}`,
    shallow: "1 batch of 10,000",
    many: "50 batches of 200",
  };
  for (const [m, label] of Object.entries(what)) {
    for (const mode of ["on", "off"]) {
      const c = `claims.${m}.fair_${mode}`;
      out.push([
        "claims",
        `Sync claiming 10, ${label}, fair share ${mode}, p50 / p99 (ceiling: the claim statement)`,
        `${n(`${c}.p50_ms`)} / ${n(`${c}.p99_ms`)} ms`,
        `${n(`claims.${m}.sql.p50_ms`)} / ${n(`claims.${m}.sql.p99_ms`)} ms`,
        `p50 × ${n(`${c}.ratio_p50_to_sql`)}`,
      ]);
    }
  }
  if (at(r, "soak") !== undefined) {
    const flat = "soak.after_warm_up.max_over_min";
    out.push([
      "soak",
      `${n("soak.requests")} requests in ${n("soak.batches")} batches, retention ${n("soak.retention_s")} s: max ÷ min after warm-up (from ${n("soak.after_warm_up.from_s")} s, ${n("soak.after_warm_up.samples")} samples)`,
      `requests ${n(`${flat}.requests_total_mib`)}, events ${n(`${flat}.request_events_total_mib`)}; claim p50 ${n(`${flat}.claim_p50_ms`)}, report p50 ${n(`${flat}.report_p50_ms`)}`,
      "target ≤ 1.2",
      `${n("soak.batches_left")} batches left`,
    ]);
  }
  out.push([
    "cpu",
    `CPU per request, serve + CLI + Postgres, ${n("cpu.requests")} req (beside: pg-boss tuned + Postgres)`,
    `${n("cpu.fusillade.total_us")} µs`,
    `${n("cpu.pg_boss_tuned.total_us")} µs`,
    `× ${n("cpu.cpu_ratio_to_pg_boss")}`,
  ]);
  out.push([
    "cpu",
    "end to end, same run (beside: pg-boss tuned enqueue + process)",
    `${n("cpu.fusillade.end_to_end_s")} s (submit ${n("cpu.fusillade.submit_s")}, watch ${n("cpu.fusillade.watch_s")}, results ${n("cpu.fusillade.results_s")})`,
    `${n("cpu.pg_boss_tuned.end_to_end_s")} s`,
    `${n("cpu.end_to_end_ratio_to_pg_boss")}× pg-boss's speed`,
  ]);
  for (const phase of ["ingest", "dispatch"]) {
    const w = `writes.${phase}`;
    out.push([
      "writes",
      `${phase} per request: requests upd / HOT, events ins, WAL bytes, statements`,
      `${n(`${w}.requests.upd`)} / ${n(`${w}.requests.hot_upd`)}, ${n(`${w}.request_events.ins`)}, ${n(`${w}.wal_bytes`)} B, ${n(`${w}.statements`)}`,
      "–",
      "–",
    ]);
  }
  out.push(...pacingRows(r, n));
  return out;
}

/** The pacing scenario's rows: each metered case against its meter, the random case against its clean run. */
function pacingRows(r: unknown, n: (p: string) => string): Row[] {
  const out: Row[] = [];
  const cases = (at(r, "pacing") as Array<{ case: string }> | undefined) ?? [];
  cases.forEach((c, i) => {
    const p = `pacing.${i}`;
    if (c.case.startsWith("random")) {
      out.push([
        `pacing ${c.case}`,
        `${n(`${p}.requests`)} req, 2 × limit ${n(`${p}.limit`)}, ${n(`${p}.latency_ms`)} ms, 3 % of calls 429 (ceiling: the same without)`,
        `${n(`${p}.random_seconds`)} s (${n(`${p}.random_throttled`)} answered 429)`,
        `${n(`${p}.clean_seconds`)} s`,
        `${n(`${p}.throughput_ratio`)} of the throughput`,
      ]);
      return;
    }
    out.push([
      `pacing ${c.case}`,
      `${n(`${p}.requests`)} req, 2 models × limit ${n(`${p}.limit`)}, rate set: ${at(r, `${p}.rate_set`)}; rate achieved, 429s (ceiling: the meter)`,
      `${n(`${p}.rate_achieved_per_min`)}/min, ${n(`${p}.throttled`)} of ${n(`${p}.calls`)} calls 429 (${n(`${p}.throttled_share`)})`,
      `${at(r, `${p}.meter`)}`,
      `${n(`${p}.ratio_to_meter`)} of the meter`,
    ]);
  });
  return out;
}

/** Prints the results as an aligned text table on stdout. */
export function printTable(results: unknown): void {
  const header: Row = ["scenario", "figure", "Fusillade", "ceiling (same run)", "ratio"];
  const all = [header, ...rows(results)];
  const widths = header.map((_, c) => Math.max(...all.map((r) => r[c]!.length)));
  const line = (r: Row) =>
    r
      .map((cell, c) => cell.padEnd(widths[c]!))
      .join(" | ")
      .trimEnd();
  console.log(`\n${line(header)}`);
  console.log(widths.map((w) => "-".repeat(w)).join("-|-"));
  for (const r of all.slice(1)) console.log(line(r));
}
