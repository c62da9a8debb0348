/** API keys at rest (src/auth/secrets.ts): AES-256-GCM, key ids, the key file. */
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, test } from "vitest";
import {
  Keyring,
  keyIdOf,
  loadKeyring,
  PLAIN_KEY_ID,
  parseKey,
  SecretKeyError,
} from "../../src/auth/secrets.js";

describe("Keyring", () => {
  test("encrypts under the current key; older keys still decrypt; others do not", () => {
    const oldKey = randomBytes(32);
    const newKey = randomBytes(32);
    const before = new Keyring(oldKey).encrypt("sk-secret-1");
    expect(before.keyId).toBe(keyIdOf(oldKey));
    expect(before.sealed.includes(Buffer.from("sk-secret-1"))).toBe(false);
    const rotated = new Keyring(newKey, [oldKey]);
    expect(rotated.decrypt(before)).toBe("sk-secret-1");
    expect(rotated.encrypt("x").keyId).toBe(keyIdOf(newKey));
    expect(() => new Keyring(newKey).decrypt(before)).toThrow(
      new RegExp(`key ${before.keyId}, which this process does not have`),
    );
  });

  test("a changed ciphertext, nonce or key id does not decrypt", () => {
    const k = new Keyring(randomBytes(32));
    const s = k.encrypt("sk-secret-2");
    const flipped = Buffer.from(s.sealed);
    flipped[0]! ^= 1;
    expect(() => k.decrypt({ ...s, sealed: flipped })).toThrow(SecretKeyError);
    expect(() => k.decrypt({ ...s, iv: randomBytes(12) })).toThrow(SecretKeyError);
    expect(() => k.decrypt({ ...s, keyId: "0000000000000000" })).toThrow(SecretKeyError);
    expect(k.decrypt({ keyId: PLAIN_KEY_ID, iv: Buffer.alloc(0), sealed: Buffer.from("p") })).toBe(
      "p",
    );
  });

  test("keys are 32 bytes in base64 or hex; anything else names the setting", () => {
    const key = randomBytes(32);
    expect(parseKey(key.toString("base64"), "X")).toEqual(key);
    expect(parseKey(key.toString("hex"), "X")).toEqual(key);
    expect(() => parseKey("short", "FUSILLADE_SECRET_KEY")).toThrow(
      /FUSILLADE_SECRET_KEY must hold 32/,
    );
  });
});

describe("loadKeyring", () => {
  test("without a key, makes secret.key (0600) in the data dir once and reuses it", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "fusillade-keys-"));
    try {
      const first = await loadKeyring({ dataDir: dir });
      expect(first.made).toBe(path.join(dir, "secret.key"));
      expect((await stat(first.made!)).mode & 0o777).toBe(0o600);
      const second = await loadKeyring({ dataDir: dir });
      expect(second.made).toBeUndefined();
      expect(second.keyring.currentId).toBe(first.keyring.currentId);
      const text = await readFile(first.made!, "utf8");
      expect(first.keyring.currentId).toBe(keyIdOf(parseKey(text, "f")));
      // Concurrent first starts agree on one key.
      const other = await mkdtemp(path.join(os.tmpdir(), "fusillade-keys-"));
      const both = await Promise.all([
        loadKeyring({ dataDir: other }),
        loadKeyring({ dataDir: other }),
      ]);
      expect(both[0].keyring.currentId).toBe(both[1].keyring.currentId);
      await rm(other, { recursive: true, force: true });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
