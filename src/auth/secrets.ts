/**
 * Upstream API keys at rest (docs/trust.md): AES-256-GCM with a 32-byte key
 * from FUSILLADE_SECRET_KEY / --secret-key-file, or a key file the server
 * makes in its data directory on first start (mode 0600). Every ciphertext
 * names its key (the first 8 bytes of the key's SHA-256, in hex), so older
 * keys can be kept for decryption while `fusillade secrets rotate`
 * re-encrypts everything under the current one.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";

/** Key id of values stored before encryption existed (migration 1764800000000): plaintext. */
export const PLAIN_KEY_ID = "plain";

const IV_BYTES = 12;
const TAG_BYTES = 16;

export interface Sealed {
  keyId: string;
  /** 12-byte nonce; empty for PLAIN_KEY_ID. */
  iv: Buffer;
  /** Ciphertext followed by the 16-byte GCM tag (the plaintext for PLAIN_KEY_ID). */
  sealed: Buffer;
}

export class SecretKeyError extends Error {}

/** The id of a key: what ciphertexts name it by. */
export function keyIdOf(key: Buffer): string {
  return createHash("sha256").update(key).digest("hex").slice(0, 16);
}

/** Parses a key as written in a variable or file: base64 (or hex) of exactly 32 bytes. */
export function parseKey(text: string, name: string): Buffer {
  const t = text.trim();
  const key = /^[0-9a-fA-F]{64}$/.test(t) ? Buffer.from(t, "hex") : Buffer.from(t, "base64");
  if (key.length !== 32) {
    throw new SecretKeyError(
      `${name} must hold 32 random bytes as base64 or hex (e.g. \`openssl rand -base64 32\`), got ${key.length} bytes`,
    );
  }
  return key;
}

/** The current key (encrypts) and older ones (decrypt only). */
export class Keyring {
  readonly currentId: string;
  readonly #keys = new Map<string, Buffer>();

  constructor(current: Buffer, previous: readonly Buffer[] = []) {
    this.currentId = keyIdOf(current);
    for (const k of previous) this.#keys.set(keyIdOf(k), k);
    this.#keys.set(this.currentId, current);
  }

  encrypt(plaintext: string): Sealed {
    const key = this.#keys.get(this.currentId)!;
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv("aes-256-gcm", key, iv);
    // The key id is authenticated too: a ciphertext cannot be relabelled.
    cipher.setAAD(Buffer.from(this.currentId));
    const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
    return { keyId: this.currentId, iv, sealed: Buffer.concat([body, cipher.getAuthTag()]) };
  }

  /** The plaintext; throws SecretKeyError when the key is not configured or the value was altered. */
  decrypt(s: Sealed): string {
    if (s.keyId === PLAIN_KEY_ID) return s.sealed.toString("utf8");
    const key = this.#keys.get(s.keyId);
    if (key === undefined) {
      throw new SecretKeyError(
        `the API key was encrypted with key ${s.keyId}, which this process does not have (FUSILLADE_SECRET_KEY / --secret-key-file, older keys in FUSILLADE_PREVIOUS_SECRET_KEYS)`,
      );
    }
    const tag = s.sealed.subarray(s.sealed.length - TAG_BYTES);
    const decipher = createDecipheriv("aes-256-gcm", key, s.iv);
    decipher.setAAD(Buffer.from(s.keyId));
    decipher.setAuthTag(tag);
    try {
      return Buffer.concat([
        decipher.update(s.sealed.subarray(0, s.sealed.length - TAG_BYTES)),
        decipher.final(),
      ]).toString("utf8");
    } catch {
      throw new SecretKeyError(
        `the API key encrypted with key ${s.keyId} does not decrypt (altered?)`,
      );
    }
  }
}

export interface KeySources {
  /** The key itself (FUSILLADE_SECRET_KEY). */
  key?: string;
  /** A file holding it (--secret-key-file / FUSILLADE_SECRET_KEY_FILE). */
  keyFile?: string;
  /** Older keys, comma-separated (FUSILLADE_PREVIOUS_SECRET_KEYS). */
  previous?: string;
  /** Where to make (or find) a key file when none is given. */
  dataDir: string;
}

/** The file a server without a configured key keeps its key in. */
export function defaultKeyFile(dataDir: string): string {
  return path.join(dataDir, "secret.key");
}

/**
 * The keyring from the configured sources; without one, the key file in the
 * data directory, made on first use. `made` says whether it was just made.
 */
export async function loadKeyring(src: KeySources): Promise<{ keyring: Keyring; made?: string }> {
  const previous = (src.previous ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map((s, i) => parseKey(s, `FUSILLADE_PREVIOUS_SECRET_KEYS[${i}]`));
  if (src.key !== undefined && src.key !== "") {
    return { keyring: new Keyring(parseKey(src.key, "FUSILLADE_SECRET_KEY"), previous) };
  }
  if (src.keyFile !== undefined && src.keyFile !== "") {
    let text: string;
    try {
      text = readFileSync(src.keyFile, "utf8");
    } catch (e) {
      throw new SecretKeyError(
        `cannot read the secret key file ${src.keyFile} (${(e as Error).message})`,
      );
    }
    return { keyring: new Keyring(parseKey(text, src.keyFile), previous) };
  }
  const file = defaultKeyFile(src.dataDir);
  const existing = await readFile(file, "utf8").catch(() => undefined);
  if (existing !== undefined) return { keyring: new Keyring(parseKey(existing, file), previous) };
  await mkdir(src.dataDir, { recursive: true });
  const key = randomBytes(32);
  // wx: two servers starting at once must not both write a key.
  try {
    await writeFile(file, `${key.toString("base64")}\n`, { mode: 0o600, flag: "wx" });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    return { keyring: new Keyring(parseKey(await readFile(file, "utf8"), file), previous) };
  }
  return { keyring: new Keyring(key, previous), made: file };
}
