/**
 * The ways to run `fusillade` outside the clone, as the README gives them:
 * `npm install -g .` (or `npm link`) from the clone, and a packed tarball
 * (`npm pack`) installed with its built dist/. Each installs into a
 * throw-away prefix (never the machine's global one) and runs the command
 * from a directory that is not the clone, against a control plane.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildDist, ROOT } from "../helpers/build.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

const run = promisify(execFile);

let t: TestControlPlane;
let dir: string;

beforeAll(async () => {
  await buildDist();
  t = await startTestControlPlane();
  dir = await mkdtemp(path.join(os.tmpdir(), "fusillade-install-"));
}, 180_000);

afterAll(async () => {
  await t?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** npm with its user-level state kept apart from the machine's (the cache is shared). */
function npm(args: string[], cwd: string) {
  return run("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], {
    cwd,
    env: { ...process.env, npm_config_update_notifier: "false" },
    maxBuffer: 16 * 1024 * 1024,
  });
}

/** Runs the installed command from a directory outside the clone. */
async function installed(prefix: string, args: string[]) {
  const elsewhere = await mkdtemp(path.join(dir, "cwd-"));
  return run(path.join(prefix, "bin", "fusillade"), args, {
    cwd: elsewhere,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, FUSILLADE_SERVER: t.url },
  });
}

describe("fusillade outside the clone", () => {
  it("npm install -g . from the clone puts the command on the PATH", async () => {
    const prefix = path.join(dir, "global-link");
    await npm(["install", "-g", "--prefix", prefix, "."], ROOT);
    const version = await installed(prefix, ["--version"]);
    expect(version.stdout.trim()).toBe("0.1.0");
    const limits = await installed(prefix, ["limits", "list", "--json"]);
    expect(JSON.parse(limits.stdout)).toHaveProperty("default_limit");
  }, 120_000);

  it("npm pack makes a small tarball with the built dist/ that installs and runs", async () => {
    // The prepare script builds dist/ when packing; the build above did it already.
    const packed = await npm(
      ["pack", "--json", "--ignore-scripts", "--pack-destination", dir],
      ROOT,
    );
    const [info] = JSON.parse(packed.stdout) as Array<{
      filename: string;
      size: number;
      files: Array<{ path: string }>;
    }>;
    const files = info!.files.map((f) => f.path);
    expect(files).toContain("bin/fusillade.js");
    expect(files).toContain("dist/src/cli/main.js");
    expect(files).toContain("dist/src/client/index.js");
    expect(files).toContain("dist/src/client/index.d.ts");
    expect(files).toContain("proto/fusillade/v1/batch_service.proto");
    expect(files.filter((f) => /^(test|bench|node_modules|src)\//.test(f))).toEqual([]);
    expect(files.filter((f) => f.endsWith(".map"))).toEqual([]);
    expect(info!.size).toBeLessThan(1024 * 1024);

    const prefix = path.join(dir, "global-tarball");
    await npm(
      ["install", "-g", "--prefix", prefix, "--prefer-offline", path.join(dir, info!.filename)],
      dir,
    );
    const version = await installed(prefix, ["--version"]);
    expect(version.stdout.trim()).toBe("0.1.0");
    const limits = await installed(prefix, ["limits", "list", "--json"]);
    expect(JSON.parse(limits.stdout)).toHaveProperty("default_limit");
  }, 300_000);
});
