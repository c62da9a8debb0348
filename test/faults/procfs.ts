/**
 * Which local TCP ports a process holds, read from Linux /proc: works on a
 * stopped (SIGSTOP) process too, so a test can tell which of the upstream's
 * deliveries a paused dispatcher sent (Delivery.remotePort).
 */
import { readdir, readFile, readlink } from "node:fs/promises";

/** Local ports of the TCP sockets (IPv4 and IPv6) that `pid` has open. */
export async function tcpPortsOf(pid: number): Promise<Set<number>> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) inodes.add(m[1]!);
  }
  const ports = new Set<number>();
  for (const table of ["tcp", "tcp6"]) {
    const text = await readFile(`/proc/${pid}/net/${table}`, "utf8").catch(() => "");
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      const local = cols[1];
      const inode = cols[9];
      if (!local || !inode || !inodes.has(inode)) continue;
      ports.add(Number.parseInt(local.split(":")[1]!, 16));
    }
  }
  return ports;
}
