/**
 * The web dashboard's static files (built by `npm run build:web` into
 * dist/web at `npm ci`/`prepare` time), served at `/` on the API port before
 * Connect routing. The page calls the API from the same origin: local mode's
 * Host check applies to it as to any caller, and with tokens the page asks
 * for one (docs/observability.md). Nothing is fetched at run time.
 *
 * src/web/ owns the dashboard's route. It may import the plain-route types
 * (src/plain-route.ts) only.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { PlainRoute } from "../plain-route.js";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
};

/** Scripts and styles from this origin only; calls to this origin only; never framed. */
const SECURITY_HEADERS = {
  "content-security-policy":
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

/** dist/web of this package, found from this module (src/web or dist/src/web). */
export function defaultDashboardDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(path.join(dir, "package.json"))) return path.join(dir, "dist", "web");
    dir = path.dirname(dir);
  }
  return path.resolve("dist", "web");
}

/**
 * Answers GET / and the built assets from `dir` (read once, at start). When
 * the dashboard was not built, `/` says how to build it.
 */
export function dashboardRoute(dir: string = defaultDashboardDir()): PlainRoute {
  const files = new Map<string, { type: string; body: Buffer }>();
  const index = path.join(dir, "index.html");
  if (existsSync(index)) {
    files.set("/", { type: TYPES[".html"]!, body: readFileSync(index) });
    const assets = path.join(dir, "assets");
    if (existsSync(assets)) {
      for (const name of readdirSync(assets)) {
        const type = TYPES[path.extname(name)];
        if (type !== undefined)
          files.set(`/assets/${name}`, { type, body: readFileSync(path.join(assets, name)) });
      }
    }
  }
  return (req, res) => {
    const url = (req.url ?? "").split("?")[0]!;
    if (url !== "/" && url !== "/index.html" && !url.startsWith("/assets/")) return false;
    if (req.method !== "GET" && req.method !== "HEAD") return false;
    const file = files.get(url === "/index.html" ? "/" : url);
    if (file === undefined) {
      res.writeHead(url === "/" ? 503 : 404, { "content-type": "text/plain; charset=utf-8" });
      res.end(
        url === "/"
          ? "the dashboard was not built: run `npm run build:web` (npm ci does it)\n"
          : "not found\n",
      );
      return true;
    }
    res.writeHead(200, {
      "content-type": file.type,
      "content-length": file.body.length,
      // Asset names carry a content hash; the page itself is always read again.
      "cache-control": url === "/" ? "no-cache" : "public, max-age=31536000, immutable",
      ...SECURITY_HEADERS,
    });
    res.end(req.method === "HEAD" ? undefined : file.body);
    return true;
  };
}
