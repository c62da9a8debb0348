/**
 * The fault suite's fleet: a control plane (`fusillade control-plane`, or
 * `fusillade serve`) and dispatchers as real processes on fixed loopback
 * ports, so each can be SIGKILLed, SIGSTOPped and started again at the same
 * address; a loopback upstream (test/helpers/upstream.ts) that counts
 * in-flight requests per model and every delivery of each request id; and a
 * batch over two models with different limits.
 *
 * Sizes: `npm test` runs every scenario at CI size (hundreds of requests);
 * `npm run test:faults` sets FUSILLADE_FAULTS=full (thousands).
 */
import { chmod, mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { afterAll, beforeAll } from "vitest";
import { AdminService } from "../../src/gen/fusillade/v1/admin_service_pb.js";
import { BatchService } from "../../src/gen/fusillade/v1/batch_service_pb.js";
import {
  type EmbeddedPostgres,
  startEmbeddedPostgres,
} from "../../src/storage/embedded-postgres.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import {
  createTestBatch,
  type FusilladeProcess,
  spawnFusillade,
  startDispatcherProcess,
  type TestItem,
} from "../helpers/dispatcher-process.js";
import { type Delivery, startUpstream, type Upstream } from "../helpers/upstream.js";
import { tcpPortsOf } from "./procfs.js";

/** Thousands of requests per scenario under `npm run test:faults`, hundreds otherwise. */
export const FULL = process.env.FUSILLADE_FAULTS === "full";

/** Two models with different limits. */
export const MODELS = [
  { model: "fault-a", limit: 5 },
  { model: "fault-b", limit: 20 },
] as const;

/** Lease TTL of the fault runs: short, so a dead holder's work comes back within seconds. */
export const LEASE_TTL_MS = 3000;

/** `n` requests: a quarter on the limit-5 model, the rest on the limit-20 one. */
export function batchItems(n: number, prefix = "r"): TestItem[] {
  return Array.from({ length: n }, (_, i) => ({
    customId: `${prefix}-${i}`,
    model: i % 4 === 0 ? MODELS[0].model : MODELS[1].model,
  }));
}

/** A port free right now on 127.0.0.1, to start (and restart) a server on. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Connect clients of a control plane, over HTTP/1.1 (each call on its own connection). */
export function apiClients(url: string) {
  // HTTP/1.1: a killed control plane leaves no half-dead HTTP/2 session behind in this process.
  const transport = createConnectTransport({ baseUrl: url, httpVersion: "1.1" });
  return {
    batch: createClient(BatchService, transport),
    admin: createClient(AdminService, transport),
  };
}

/** How the control plane runs. */
export type ControlPlaneKind =
  | { kind: "control-plane"; databaseUrl: string }
  /** `serve` (control plane + its own dispatcher) on an embedded Postgres in `dataDir`. */
  | { kind: "serve"; dataDir: string };

export interface FleetOptions {
  controlPlane: ControlPlaneKind;
  /** Dispatcher processes besides serve's own. @default 3 */
  dispatchers?: number;
  /** Extra dispatcher flags (timeouts). */
  dispatcherArgs?: string[];
}

/** Dispatcher flags: enough capacity for both limits; short upstream timeouts. */
const DISPATCHER_ARGS = ["--capacity", "25", "--first-byte-timeout", "2s", "--total-timeout", "3s"];

/** A control plane and dispatchers as processes, an upstream, API clients. */
export class Fleet {
  readonly upstream: Upstream;
  readonly port: number;
  readonly url: string;
  readonly api: ReturnType<typeof apiClients>;
  controlPlane: FusilladeProcess | undefined;
  readonly dispatchers: Array<FusilladeProcess | undefined> = [];
  readonly #opts: FleetOptions;
  /** Which process sent from a port (upstream Delivery.remotePort): "d1#1234". */
  readonly portOwners = new Map<number, string>();

  private constructor(opts: FleetOptions, upstream: Upstream, port: number) {
    this.#opts = opts;
    this.upstream = upstream;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.api = apiClients(this.url);
  }

  /**
   * Starts the upstream, the control plane and the dispatchers; sets the two models' limits.
   * `created` is told of the fleet before its processes start, so a caller whose hook times
   * out while they start can still close it (see {@link useFleetOnTestDatabase}).
   */
  static async start(opts: FleetOptions, created?: (f: Fleet) => void): Promise<Fleet> {
    const f = new Fleet(opts, await startUpstream(), await freePort());
    created?.(f);
    f.upstream.settleArrivals = true;
    f.upstream.on("arrive", (d: Delivery) => {
      if (!f.portOwners.has(d.remotePort)) void f.#lookUpOwner(d.remotePort);
    });
    // Answers after 10–50 ms unless a scenario says otherwise.
    f.upstream.respond = () => ({ delayMs: 10 + Math.floor(Math.random() * 40) });
    await f.startControlPlane();
    for (const { model, limit } of MODELS) await f.api.admin.setModelLimit({ model, limit });
    const n = opts.dispatchers ?? 3;
    await Promise.all(Array.from({ length: n }, (_, i) => f.startDispatcher(i)));
    return f;
  }

  /** Starts (again) the control plane on the fleet's port; resolves once it serves. */
  async startControlPlane(): Promise<void> {
    this.#refuseIfClosed();
    const cp = this.#opts.controlPlane;
    const common = ["--listen", `127.0.0.1:${this.port}`, "--lease-ttl", `${LEASE_TTL_MS}ms`];
    const env = { FUSILLADE_LOG_LEVEL: "warn" };
    if (cp.kind === "control-plane") {
      this.controlPlane = spawnFusillade(
        ["control-plane", ...common, "--database-url", cp.databaseUrl],
        env,
      );
      await this.controlPlane.waitFor(/control plane listening on/, 60_000);
    } else {
      this.controlPlane = spawnFusillade(
        ["serve", ...common, "--data-dir", cp.dataDir, ...DISPATCHER_ARGS, "--id", "serve"],
        { ...env, DATABASE_URL: "" },
      );
      await this.controlPlane.waitFor(/serving on/, 60_000);
    }
  }

  /** Starts dispatcher `i` (again: the same id, as a supervisor would restart it). */
  async startDispatcher(i: number): Promise<void> {
    this.#refuseIfClosed();
    const old = this.dispatchers[i];
    if (old) this.#retired.push(old);
    const p = await startDispatcherProcess({
      controlPlane: this.url,
      id: `d${i}`,
      args: [...DISPATCHER_ARGS, ...(this.#opts.dispatcherArgs ?? [])],
    });
    if (this.#closed) {
      // Closed while it started (a timed-out beforeAll): nobody else will stop it.
      await Fleet.kill(p);
      throw new Error(`dispatcher d${i} started after the fleet was closed`);
    }
    this.dispatchers[i] = p;
  }

  async #lookUpOwner(port: number): Promise<void> {
    this.portOwners.set(port, "?");
    const procs: Array<[string, FusilladeProcess | undefined]> = [
      ...this.dispatchers.map((p, i) => [`d${i}`, p] as [string, FusilladeProcess | undefined]),
      ["cp", this.controlPlane],
    ];
    for (const [name, p] of procs) {
      if (!p || p.child.exitCode !== null) continue;
      const ports = await tcpPortsOf(p.pid).catch(() => new Set<number>());
      if (ports.has(port)) this.portOwners.set(port, `${name}#${p.pid}`);
    }
  }

  /**
   * SIGTERMs every dispatcher and prints the counters each logs as it stops (held claims,
   * slots, running, reportsFailing…): what a stuck batch's holders were doing.
   */
  async dumpDispatchers(): Promise<void> {
    await Promise.all(
      this.dispatchers.map(async (p, i) => {
        if (!p || p.child.exitCode !== null) return;
        p.child.kill("SIGTERM");
        const timer = setTimeout(() => p.child.kill("SIGKILL"), 10_000);
        await p.exited;
        clearTimeout(timer);
        const line = p.stderr().match(/.*"msg":"dispatcher stopped".*/)?.[0] ?? "(no stats)";
        const warnings = p.stderr().match(/.*"level":(40|50).*/g) ?? [];
        console.log(`FAULTS-DISPATCHER d${i} ${line}`);
        for (const w of warnings.slice(-5))
          console.log(`FAULTS-DISPATCHER d${i} ${w.slice(0, 400)}`);
      }),
    );
  }

  /** Dispatchers' "self-fenced" warnings so far, killed processes' included. */
  selfFenced(): number {
    return [...this.dispatchers, ...this.#retired].reduce(
      (n, p) => n + (p?.stderr().match(/self-fenced/g)?.length ?? 0),
      0,
    );
  }

  readonly #retired: FusilladeProcess[] = [];

  /** SIGKILLs a process and waits for its exit. */
  static async kill(p: FusilladeProcess | undefined): Promise<void> {
    if (!p) return;
    p.child.kill("SIGKILL");
    await p.exited;
  }

  /** Creates a file and a batch of `list`; returns the batch id. */
  createBatch(list: TestItem[], policy: { maxRetries?: number; initialBackoffMs?: number } = {}) {
    return createTestBatch(this.api.batch, this.upstream.url, list, {
      maxRetries: policy.maxRetries ?? 5,
      initialBackoffMs: policy.initialBackoffMs ?? 50,
      maxBackoffMs: 500,
    });
  }

  #closed = false;

  #refuseIfClosed(): void {
    if (this.#closed) throw new Error("the fleet is closed");
  }

  /** SIGKILLs everything still running (and whatever starts later); closes the upstream. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.dispatchers, this.controlPlane].map((p) => Fleet.kill(p)));
    await this.upstream.close();
  }
}

/** Every process of the fleet that exited although the test did not kill it. */
export function unexpectedExits(procs: Array<FusilladeProcess | undefined>): string[] {
  return procs.flatMap((p) =>
    p && p.child.exitCode !== null
      ? [`pid ${p.pid} exited ${p.child.exitCode}: ${p.stderr().slice(-2000)}`]
      : [],
  );
}

/** A pool on a database, for the checks that read Postgres directly. */
/**
 * A fleet with a split control plane on this test file's own database:
 * started in beforeAll, closed in afterAll (after `beforeClose`, e.g. waking
 * a paused process). Read `fleet` and `sql` inside tests.
 */
export function useFleetOnTestDatabase(beforeClose: (fleet: Fleet) => void = () => undefined): {
  readonly fleet: Fleet;
  readonly sql: pg.Pool;
} {
  let db: TestDatabase | undefined;
  let fleet: Fleet | undefined;
  let sql: pg.Pool | undefined;
  beforeAll(async () => {
    db = await createTestDatabase();
    sql = pool(db.url);
    // `fleet` is set as soon as it exists: afterAll closes it even when this hook timed out
    // while its processes started.
    await Fleet.start({ controlPlane: { kind: "control-plane", databaseUrl: db.url } }, (f) => {
      fleet = f;
    });
  });
  afterAll(async () => {
    if (fleet) beforeClose(fleet);
    await fleet?.close();
    await sql?.end();
    await db?.drop();
  });
  return {
    get fleet() {
      if (!fleet) throw new Error("the fleet exists only once beforeAll ran");
      return fleet;
    },
    get sql() {
      if (!sql) throw new Error("the pool exists only once beforeAll ran");
      return sql;
    },
  };
}

export function pool(url: string): pg.Pool {
  const p = new pg.Pool({ connectionString: url, max: 2 });
  p.on("error", () => {}); // an idle client dropped by a Postgres restart
  return p;
}

/**
 * Waits (at most `withinMs`) until `p` has a request in flight at the upstream, then sends
 * it `signal` in the same turn (no I/O in between); sends it anyway once `withinMs` have
 * passed (near a batch's end a dispatcher may have nothing left to do). Returns the
 * deliveries it had in flight then and its TCP ports (read again after a SIGSTOP, which
 * keeps them stable).
 */
export async function signalWhenBusy(
  upstream: Upstream,
  p: FusilladeProcess,
  signal: NodeJS.Signals,
  withinMs = 5000,
): Promise<{ held: Delivery[]; ports: Set<number>; at: number }> {
  const deadline = Date.now() + withinMs;
  let ports = new Set<number>();
  const inFlight = () =>
    upstream.deliveries.filter((d) => ports.has(d.remotePort) && d.end === undefined);
  for (;;) {
    // Read again each round: it may have opened new connections meanwhile.
    ports = await tcpPortsOf(p.pid);
    const wait = Math.min(500, deadline - Date.now());
    if (wait <= 0) break;
    const busy = await upstream
      .until(() => inFlight().length > 0, wait)
      .then(
        () => true,
        () => false,
      );
    if (busy) break;
  }
  p.child.kill(signal);
  const at = Date.now();
  let held = inFlight();
  if (signal === "SIGSTOP") {
    // Stopped, its sockets stay put: read them again (it may have opened one since).
    for (const port of await tcpPortsOf(p.pid)) ports.add(port);
    held = upstream.deliveries.filter(
      (d) =>
        ports.has(d.remotePort) && d.arrivedAt <= at && (d.end === undefined || d.endedAt! >= at),
    );
  }
  return { held, ports, at };
}

/**
 * An embedded Postgres of the calling test file's own, on a fixed port, that can be stopped
 * and started again (the machine's Postgres is never touched). Its folder is named like
 * global-setup's, so a later run stops a server left behind by a killed one.
 */
export class OwnPostgres {
  #server: EmbeddedPostgres | undefined;
  private constructor(
    readonly dir: string,
    readonly port: number,
  ) {}

  static async start(): Promise<OwnPostgres> {
    const dir = await mkdtemp(path.join(os.tmpdir(), `fusillade-test-${process.pid}-`));
    await chmod(dir, 0o755); // as root, Postgres runs as `nobody`, which must get through
    const p = new OwnPostgres(dir, await freePort());
    await p.start();
    return p;
  }

  #url = "";

  /** Its URL (with the generated password, which stays the same across restarts). */
  get url(): string {
    return this.#url;
  }

  /** Starts the server (again) on the same port and data. */
  async start(): Promise<void> {
    this.#server = await startEmbeddedPostgres({
      dataDir: path.join(this.dir, "pg"),
      port: this.port,
      ephemeral: true,
    });
    this.#url = this.#server.url;
  }

  /** `pg_ctl stop -m fast`: every connection is closed. */
  async stop(): Promise<void> {
    await this.#server?.stop();
    this.#server = undefined;
  }

  /** Stops the server and removes its folder. */
  async close(): Promise<void> {
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}
