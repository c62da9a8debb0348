/**
 * A COPY that runs while an upload is still streaming: its rows go to
 * Postgres as they are spooled, so a fast client's upload is stored in about
 * the time of the COPY alone, instead of the time to receive it plus the COPY
 * after it.
 *
 * The spool (./template-spool.ts) still gets every row: the lane is only a
 * head start, dropped whenever it could cost something, after which the
 * upload is stored from the spool as if the lane had never been:
 * - it opens only when the pool has a connection to spare, and at most
 *   LANES_PER_POOL at once (it holds its connection while the client sends);
 * - it is dropped when the client leaves it waiting STALL_MS for rows (a slow
 *   client must not hold a pooled connection: the reason for the spool), on
 *   any error of its own, and when the upload fails;
 * - nothing is committed until the stream has ended and every check passed;
 *   a dropped lane's connection is closed, which rolls its transaction back.
 */
import { once } from "node:events";
import type { Writable } from "node:stream";
import type { Pool, PoolClient } from "pg";
import copyStreams from "pg-copy-streams";

/** Lanes open at once on one pool: each holds one of its connections while a client sends. */
export const LANES_PER_POOL = 2;
/** A lane the client leaves this long without a block of rows is dropped. */
export const STALL_MS = 1_000;

const open = new WeakMap<Pool, number>();
/** Lanes of `pool` opened (1) or closed (-1). */
const count = (pool: Pool, by: 1 | -1) => open.set(pool, (open.get(pool) ?? 0) + by);
const ignore = () => undefined;

export class CopyLane {
  #state: "idle" | "opening" | "open" | "gone" = "idle";
  #client: PoolClient | undefined;
  #copy: Writable | undefined;
  #stall: NodeJS.Timeout | undefined;

  /**
   * @param begin runs first in the lane's transaction (the file's row, which
   *   the rows' foreign key needs); false: do not open (e.g. the idempotency
   *   key is taken).
   * @param copySql the `COPY … FROM STDIN` the blocks are rows of.
   */
  constructor(
    private readonly pool: Pool,
    private readonly begin: (q: PoolClient) => Promise<boolean>,
    private readonly copySql: string,
  ) {}

  /** True while the lane holds every block written so far and can commit. */
  get isOpen(): boolean {
    return this.#state === "open";
  }

  /**
   * Sends a block of COPY text, opening the lane at the first unless it is
   * also the `last` (an upload that fits in one block gains nothing from a
   * lane). Never throws: a lane that cannot take the block is dropped (the
   * spool has it).
   */
  async write(block: string, last: boolean): Promise<void> {
    if (this.#state === "idle") {
      if (last) this.#state = "gone";
      else await this.#open();
    }
    if (this.#state !== "open") return;
    clearTimeout(this.#stall);
    try {
      if (!this.#copy!.write(block)) await once(this.#copy!, "drain");
    } catch {
      this.drop();
      return;
    }
    // Waiting for the client from here on: a slow one loses the lane.
    if (this.#state === "open") this.#stall = setTimeout(() => this.drop(), STALL_MS);
  }

  /**
   * Ends the COPY, runs `finish` in the same transaction and commits; returns
   * its result. Undefined when the lane is not open or its COPY failed (the
   * caller stores the upload from the spool). When `finish` throws, the lane
   * is dropped (nothing committed) and the error passes on.
   */
  async commit<T>(finish: (q: PoolClient) => Promise<T>): Promise<T | undefined> {
    clearTimeout(this.#stall);
    if (this.#state !== "open") return undefined;
    const client = this.#client!;
    try {
      const copy = this.#copy!;
      const done = once(copy, "finish");
      copy.end();
      await done;
    } catch {
      this.drop();
      return undefined;
    }
    try {
      const result = await finish(client);
      await client.query("COMMIT");
      this.#close(undefined);
      return result;
    } catch (e) {
      this.drop();
      throw e;
    }
  }

  /** Gives the lane up: its connection is closed, its transaction rolled back. Idempotent. */
  drop(): void {
    clearTimeout(this.#stall);
    this.#close(new Error("upload's COPY lane dropped"));
  }

  async #open(): Promise<void> {
    const inUse = open.get(this.pool) ?? 0;
    const max = this.pool.options.max ?? 10;
    const spare =
      this.pool.waitingCount === 0 && (this.pool.idleCount > 0 || this.pool.totalCount < max);
    if (inUse >= LANES_PER_POOL || !spare) {
      this.#state = "gone";
      return;
    }
    this.#state = "opening";
    count(this.pool, 1);
    let client: PoolClient;
    try {
      client = await this.pool.connect();
    } catch {
      count(this.pool, -1);
      this.#state = "gone";
      return;
    }
    // A connection error while the lane holds it must not go unheard (it would end the process).
    client.on("error", ignore);
    this.#client = client;
    // Dropped while it connected (the upload failed meanwhile).
    if (this.#state !== "opening") {
      this.#close(new Error("upload's COPY lane dropped"));
      return;
    }
    try {
      await client.query("BEGIN");
      if (!(await this.begin(client))) throw new Error("not opened");
      const copy = client.query(copyStreams.from(this.copySql));
      // Errors surface in write() and commit(); a dropped lane's late error goes nowhere.
      copy.on("error", () => this.drop());
      this.#copy = copy;
      // Dropped while it opened (the upload failed meanwhile): close now.
      if (this.#state !== "opening") {
        this.#close(new Error("upload's COPY lane dropped"));
        return;
      }
      this.#state = "open";
    } catch {
      this.#close(new Error("upload's COPY lane could not open"));
    }
  }

  /**
   * The lane is gone: returns its connection, if it holds one (closed when
   * `error` is given), and frees its place. Idempotent.
   */
  #close(error: Error | undefined): void {
    this.#state = "gone";
    const client = this.#client;
    if (client === undefined) return;
    this.#client = undefined;
    this.#copy = undefined;
    count(this.pool, -1);
    client.removeListener("error", ignore);
    client.release(error);
  }
}
