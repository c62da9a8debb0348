/**
 * Which Postgres `serve` uses (DESIGN §7): `DATABASE_URL` when set, otherwise an embedded
 * server with its data under the project folder. Never whatever happens to listen on 5432:
 * the README path must be the one the tests take.
 */
import path from "node:path";
import { FusilladeError } from "../domain/errors.js";
import { startEmbeddedPostgres } from "./embedded-postgres.js";

export interface ResolveDatabaseOptions {
  /** An external server's URL; when set (non-blank) nothing is started. */
  databaseUrl?: string | undefined;
  /** Project state folder; the embedded cluster lives in `<dataDir>/pg`. */
  dataDir: string;
  /** Progress messages from the embedded server. @default none */
  log?: (msg: string) => void;
}

/** The database to use, and how to let go of it. */
export interface ResolvedDatabase {
  url: string;
  /** True when this process started the server (and `stop()` stops it). */
  embedded: boolean;
  /** Stops the embedded server; a no-op for an external one. */
  stop(): Promise<void>;
}

/** `databaseUrl` when given, else an embedded Postgres on `<dataDir>/pg`, started now. */
export async function resolveDatabase(opts: ResolveDatabaseOptions): Promise<ResolvedDatabase> {
  const databaseUrl = opts.databaseUrl?.trim();
  if (databaseUrl) {
    checkUrl(databaseUrl);
    return { url: databaseUrl, embedded: false, stop: async () => {} };
  }
  const server = await startEmbeddedPostgres({
    dataDir: path.join(opts.dataDir, "pg"),
    ...(opts.log ? { log: opts.log } : {}),
  });
  return { url: server.url, embedded: true, stop: () => server.stop() };
}

/** Fails early, naming the variable, on something that is not a postgres:// URL. */
function checkUrl(url: string): void {
  let protocol: string;
  try {
    protocol = new URL(url).protocol;
  } catch {
    throw new FusilladeError(
      "DATABASE_URL is not a URL (expected postgres://user@host:port/database)",
    );
  }
  if (protocol !== "postgres:" && protocol !== "postgresql:") {
    throw new FusilladeError(
      `DATABASE_URL must start with postgres:// or postgresql://, not ${protocol}//`,
    );
  }
}
