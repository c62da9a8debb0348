/** The dispatchers a control plane hears from: joined on the first call, left after silence. */
import { Writable } from "node:stream";
import { pino } from "pino";
import { expect, test } from "vitest";
import { Fleet } from "../../src/metrics/fleet.js";

test("a dispatcher joins once, and has left after goneAfterMs without a call", async () => {
  const lines: Array<{ msg: string; dispatcher: string }> = [];
  let changed: () => void = () => undefined;
  const log = pino(
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(JSON.parse(chunk.toString("utf8")));
        changed();
        cb();
      },
    }),
  );
  const fleet = new Fleet(log, 150, 20);
  try {
    fleet.seen("d-1");
    fleet.seen("d-1");
    fleet.seen("d-2");
    expect(fleet.size).toBe(2);
    expect(lines.map((l) => `${l.msg} ${l.dispatcher}`)).toEqual([
      "dispatcher joined d-1",
      "dispatcher joined d-2",
    ]);
    // d-2 keeps calling; d-1 goes quiet.
    const keepAlive = setInterval(() => fleet.seen("d-2"), 20);
    await new Promise<void>((resolve) => {
      changed = () => {
        if (lines.some((l) => l.msg.startsWith("dispatcher left"))) resolve();
      };
    });
    clearInterval(keepAlive);
    expect(
      lines.filter((l) => l.msg.startsWith("dispatcher left")).map((l) => l.dispatcher),
    ).toEqual(["d-1"]);
    expect(fleet.size).toBe(1);
  } finally {
    fleet.close();
  }
});
