#!/usr/bin/env node
// The `fusillade` command. The TypeScript sources are compiled to dist/ by
// `npm ci` / `npm install` (the prepare script) and by `npm start`.
import { existsSync } from "node:fs";

const main = new URL("../dist/src/cli/main.js", import.meta.url);
if (!existsSync(main)) {
  console.error("fusillade: dist/ is missing; run `npm run build` (or `npm ci`) first.");
  process.exit(1);
}
await import(main.href);
