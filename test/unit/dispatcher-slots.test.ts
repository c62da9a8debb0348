/**
 * SlotBook's arithmetic (src/dispatcher/model-slots.ts): room, want, keep,
 * when to Sync, and what to tell WaitForWork; each model's gate, buffer and
 * grant. Pure: no sockets.
 */
import { describe, expect, test } from "vitest";
import type { HeldLease } from "../../src/dispatcher/lease-table.js";
import { ADMIT_ALL } from "../../src/dispatcher/model-gate.js";
import { type ModelSlots, SlotBook } from "../../src/dispatcher/model-slots.js";

/** A model of `book` in the given state (queue filled with `queued` placeholders). */
function model(
  book: SlotBook,
  name: string,
  s: Partial<
    Pick<ModelSlots, "token" | "slots" | "target" | "running" | "requested" | "starved">
  > & {
    queued?: number;
  } = {},
): ModelSlots {
  const m = book.get(name);
  const { queued = 0, ...fields } = s;
  Object.assign(m, { token: 1n, ...fields });
  for (let i = 0; i < queued; i++) m.queue.push({} as HeldLease);
  return m;
}

describe("SlotBook.room", () => {
  test("usable + max(1, ceil(usable × prefetch)) − held − requested", () => {
    const book = new SlotBook(100, 0.5);
    const m = model(book, "a", { slots: 10, target: 10, running: 4, queued: 3, requested: 2 });
    expect(m.usable).toBe(10);
    expect(book.room(m)).toBe(10 + 5 - 7 - 2);
  });

  test("usable is min(slots, target): above the target the buffer shrinks", () => {
    const book = new SlotBook(100, 0.5);
    expect(book.room(model(book, "a", { slots: 10, target: 4 }))).toBe(4 + 2);
    expect(book.room(model(book, "b", { slots: 3, target: 8 }))).toBe(3 + 2); // ceil(1.5)
  });

  test("at least one claim beyond the slots, whatever the prefetch", () => {
    expect(
      new SlotBook(100, 0).room(model(new SlotBook(100, 0), "a", { slots: 10, target: 10 })),
    ).toBe(11);
    const small = new SlotBook(100, 0.05);
    expect(small.room(model(small, "a", { slots: 10, target: 10 }))).toBe(11);
    const big = new SlotBook(100, 2);
    expect(big.room(model(big, "a", { slots: 10, target: 10 }))).toBe(30);
  });

  test("0 without usable slots (no grant, target 0), never negative", () => {
    const book = new SlotBook(100, 0.5);
    expect(book.room(model(book, "none", { token: 0n, slots: 10, target: 10 }))).toBe(0);
    expect(book.room(model(book, "zero", { slots: 10, target: 0 }))).toBe(0);
    expect(book.room(model(book, "full", { slots: 2, target: 2, running: 2, queued: 5 }))).toBe(0);
  });
});

describe("SlotBook.want and keep", () => {
  test("starved: want is what it holds (running + buffered)", () => {
    const book = new SlotBook(100, 0.5);
    const m = model(book, "a", { slots: 10, target: 10, running: 3, queued: 2, starved: true });
    expect(book.want(m)).toBe(5);
  });

  test("with a backlog: the capacity less the other models' granted slots, never below held", () => {
    const book = new SlotBook(100, 0.5);
    const m = model(book, "a", { slots: 10, target: 10, running: 2 });
    model(book, "b", { slots: 30, target: 30 });
    model(book, "lost", { token: 0n, slots: 50, target: 50 }); // no grant: not counted
    expect(book.slotsHeld).toBe(40);
    expect(book.want(m)).toBe(100 - 30);
    model(book, "c", { slots: 65, target: 65 });
    // 100 − 95 = 5 < 12 held
    const held = model(book, "d", { token: 0n, running: 7, queued: 5 });
    expect(book.want(held)).toBe(12);
  });

  test("keep = max(running, min(usable, want))", () => {
    const book = new SlotBook(100, 0.5);
    // Starved, wants 5 (3 running + 2 buffered) of 10 usable: keeps 5.
    expect(
      book.keep(model(book, "a", { slots: 10, target: 10, running: 3, queued: 2, starved: true })),
    ).toBe(5);
    // Above the target with 8 running: keeps the 8 (never below what runs).
    expect(book.keep(model(book, "b", { slots: 10, target: 4, running: 8 }))).toBe(8);
    // Above the target with 2 running and a backlog: down to the target.
    expect(book.keep(model(book, "c", { slots: 10, target: 4, running: 2 }))).toBe(4);
    // Nothing running, nothing wanted: keeps nothing.
    expect(book.keep(model(book, "d", { slots: 6, target: 6, starved: true }))).toBe(0);
  });
});

describe("SlotBook.wantsSync", () => {
  const book = new SlotBook(100, 0.5);
  test.each([
    ["no grant, not starved, idle: ask for one", { token: 0n }, true],
    ["no grant, starved: wait to be told", { token: 0n, starved: true }, false],
    ["no grant, aborted requests still running: not yet", { token: 0n, running: 1 }, false],
    ["granted, room, not starved, nothing asked: claim", { slots: 4, target: 4 }, true],
    ["granted, room, claims already asked for", { slots: 4, target: 4, requested: 1 }, false],
    ["granted, room, starved", { slots: 4, target: 4, starved: true }, false],
    ["granted, buffer full", { slots: 2, target: 2, running: 2, queued: 1 }, false],
    // Buffer of 10 + 5: reports refill it while requests run, unless it is at least half empty.
    [
      "running, buffer less than half empty: the reports will refill it",
      { slots: 10, target: 10, running: 10, queued: 1 },
      false,
    ],
    [
      "running, buffer at least half empty (a ramp, or slots just grown): claim",
      { slots: 10, target: 10, running: 5, queued: 0 },
      true,
    ],
    [
      "above the target, running ≤ target: hand back",
      { slots: 6, target: 2, running: 2, queued: 4 },
      true,
    ],
    [
      "above the target, running > target: not yet",
      { slots: 6, target: 2, running: 3, queued: 4 },
      false,
    ],
  ] as const)("%s", (_what, state, expected) => {
    const m = model(
      book,
      JSON.stringify(state, (_k, v) => (typeof v === "bigint" ? `${v}` : v)),
      state,
    );
    expect(book.wantsSync(m)).toBe(expected);
  });
});

describe("SlotBook.interest", () => {
  test("hungry: starved with room; grow: slots < target; more: a backlog beyond its share; known: granted; newModels: Σ slots < capacity", () => {
    const book = new SlotBook(10, 0.5);
    model(book, "hungry", { slots: 2, target: 2, starved: true });
    model(book, "full-starved", { slots: 1, target: 1, running: 1, queued: 1, starved: true });
    model(book, "busy", { slots: 2, target: 2 });
    model(book, "grow", { slots: 1, target: 3, running: 1, queued: 2 });
    model(book, "gone", { token: 0n, starved: true });
    const i = book.interest(["x"]);
    expect(i).toEqual({
      models: ["x"],
      hungry: ["hungry"],
      grow: ["grow"],
      known: ["hungry", "full-starved", "busy", "grow"],
      newModels: true, // 6 of 10
      more: ["busy"], // not starved, at its target, wants what the capacity leaves
    });
    model(book, "big", { slots: 4, target: 4, running: 4, queued: 2 });
    expect(book.interest([]).newModels).toBe(false); // 10 of 10
  });
});

describe("ModelSlots: the gate, the buffer, the grant", () => {
  test("each model gets its own gate, made once when first met; the default admits everything", () => {
    const made: string[] = [];
    const book = new SlotBook(100, 0.5, (model) => {
      made.push(model);
      return { admit: () => 7, done: () => undefined };
    });
    const a = book.get("a");
    expect(book.get("a").gate).toBe(a.gate);
    expect(book.get("b").gate).not.toBe(a.gate);
    expect(made).toEqual(["a", "b"]);
    expect(new SlotBook(100, 0.5).get("a").gate).toBe(ADMIT_ALL);
  });

  test("unqueue takes one claim out of the buffer, and says whether it was there", () => {
    const book = new SlotBook(100, 0.5);
    const m = model(book, "a", { slots: 2, target: 2, queued: 3 });
    const [x, y, z] = m.queue;
    expect(m.unqueue(y!)).toBe(true);
    expect(m.queue).toEqual([x, z]);
    expect(m.unqueue(y!)).toBe(false);
  });

  test("dropGrant: no token, no slots, no target; its fence timer cleared; grantedSlots and gauges see it", () => {
    const book = new SlotBook(100, 0.5);
    const a = model(book, "a", { slots: 4, target: 4, running: 1, queued: 2 });
    model(book, "b", { slots: 3, target: 3 });
    let fired = false;
    a.fenceTimer = setTimeout(() => {
      fired = true;
    }, 0);
    expect(book.grantedSlots()).toEqual({ a: 4, b: 3 });
    a.dropGrant();
    expect([a.token, a.slots, a.target, a.usable]).toEqual([0n, 0, 0, 0]);
    expect(book.grantedSlots()).toEqual({ b: 3 });
    expect([...book.gauges()].find((g) => g.model === "a")).toEqual({
      model: "a",
      running: 1,
      slots: 0,
      buffered: 2,
      held: false,
    });
    return new Promise<void>((resolve) =>
      setImmediate(() => {
        expect(fired).toBe(false);
        resolve();
      }),
    );
  });
});
