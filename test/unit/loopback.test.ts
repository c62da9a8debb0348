import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { expect, test } from "vitest";
import { connect } from "../../src/cli/client/connection.js";
import { isLoopbackHost, wantsCompression } from "../../src/domain/loopback.js";

test("loopback hosts: names and addresses, with or without a port", () => {
  for (const h of ["localhost", "LOCALHOST:8080", "127.0.0.1", "127.9.8.7:1", "[::1]", "[::1]:443"])
    expect(isLoopbackHost(h), h).toBe(true);
  for (const h of ["example.com", "10.0.0.1", "128.0.0.1", "[::2]", "localhost.example.com", ""])
    expect(isLoopbackHost(h), h).toBe(false);
});

test("a client asks for compressed answers from a remote control plane, not over loopback", () => {
  expect(wantsCompression("https://fusillade.example.com")).toBe(true);
  expect(wantsCompression("http://10.1.2.3:8080")).toBe(true);
  expect(wantsCompression("http://127.0.0.1:8080")).toBe(false);
  expect(wantsCompression("http://localhost:8080")).toBe(false);
  expect(wantsCompression("http://[::1]:8080")).toBe(false);
});

test("the CLI's connection to a loopback server offers no compression (a server streaming call)", async () => {
  const seen: http2.IncomingHttpHeaders[] = [];
  const server = http2.createServer((req, res) => {
    seen.push(req.headers);
    res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const conn = connect(`http://127.0.0.1:${port}`);
  try {
    const call = async () => {
      for await (const _ of conn.batch.getBatchResults({ batchId: "b" })) break;
    };
    await expect(call()).rejects.toThrow();
    expect(seen).toHaveLength(1);
    const offered = `${seen[0]!["connect-accept-encoding"] ?? ""} ${seen[0]!["accept-encoding"] ?? ""}`;
    expect(offered).not.toMatch(/gzip|br/);
  } finally {
    conn.close();
    await new Promise((resolve) => server.close(resolve));
  }
});
