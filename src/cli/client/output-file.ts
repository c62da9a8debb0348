/**
 * Where the CLI writes a file the user named (`--output`, `--errors`).
 *
 * Modes, chosen from what the path is when the download starts:
 * - a regular file, or nothing yet: written under a temporary name next to
 *   it and renamed over it when complete, so a file that exists is whole; a
 *   replaced file keeps its mode (and, for root, its owner); a symlink to a
 *   file is followed, so the link stays a link;
 * - anything else (a device such as /dev/null, a FIFO, /dev/stdout, a
 *   socket): written into directly. Renaming over it would replace the
 *   device with a regular file (as root, `--output /dev/null` did exactly
 *   that), and a reader of a FIFO would wait forever.
 */
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { createWriteStream, type Stats, type WriteStream } from "node:fs";
import { chmod, chown, realpath, rename, rm, stat } from "node:fs/promises";
import path from "node:path";

/** An open output: write lines, then finish (publish) or abort (discard). */
export interface OutputFile {
  write(line: string): Promise<void>;
  finish(): Promise<void>;
  abort(): Promise<void>;
}

/** Writes with backpressure: waits for 'drain' when the stream's buffer is full. */
export async function writeLine(stream: NodeJS.WritableStream, line: string): Promise<void> {
  if (!stream.write(`${line}\n`)) await once(stream, "drain");
}

/** Opens `target` for writing, as the header describes; errors name `target`. */
export async function openOutputFile(
  target: string,
  fail: (message: string, cause: unknown) => Error,
): Promise<OutputFile> {
  const existing: Stats | undefined = await stat(target).catch(() => undefined);
  if (existing !== undefined && !existing.isFile()) {
    if (existing.isDirectory()) throw fail(`cannot write ${target}: it is a directory`, undefined);
    return streamFile(target, createWriteStream(target, { flags: "w" }), fail, {
      publish: async () => undefined,
      discard: async () => undefined,
    });
  }
  // Follow a symlink so the rename replaces the file, not the link.
  const real = existing ? await realpath(target) : target;
  const partial = path.join(
    path.dirname(real),
    `.${path.basename(real)}.partial-${process.pid}-${randomBytes(4).toString("hex")}`,
  );
  const stream = createWriteStream(partial, { flags: "wx", mode: 0o600 });
  return streamFile(target, stream, fail, {
    publish: async () => {
      if (existing) {
        // The umask applied at creation; set the old file's bits exactly.
        await chmod(partial, existing.mode & 0o7777);
        await chown(partial, existing.uid, existing.gid).catch(() => undefined);
      } else {
        await chmod(partial, 0o666 & ~process.umask());
      }
      await rename(partial, real);
    },
    discard: () => rm(partial, { force: true }),
  });
}

function streamFile(
  target: string,
  stream: WriteStream,
  fail: (message: string, cause: unknown) => Error,
  steps: { publish(): Promise<void>; discard(): Promise<void> },
): OutputFile {
  let failed: Error | undefined;
  stream.on("error", (e) => {
    failed = e;
  });
  const check = () => {
    if (failed) throw fail(`cannot write ${target}: ${failed.message}`, failed);
  };
  return {
    // once(stream, "drain") in writeLine rejects if the stream fails meanwhile.
    write: async (line) => {
      check();
      await writeLine(stream, line);
    },
    finish: async () => {
      check();
      stream.end();
      await once(stream, "close");
      check();
      await steps.publish().catch((e: unknown) => {
        throw fail(`cannot write ${target}: ${(e as Error).message}`, e);
      });
    },
    abort: async () => {
      stream.destroy();
      await steps.discard();
    },
  };
}
