/**
 * The edgeid backup file: one file holding a consistent copy of a server's data dir (the SQLite
 * database taken with SQLite's online backup API, the CA certificates and keys, the admin token),
 * encrypted as a whole with a passphrase.
 *
 *   "EDGEID-BACKUP-1\n" <header JSON> "\n" <AES-256-GCM ciphertext> <16-byte GCM tag>
 *
 * The header is readable without the passphrase (when the backup was made, the audit chain head
 * it holds, the KDF parameters) and is the GCM additional data, so it cannot be changed unseen.
 * Key derivation: scrypt (RFC 7914) over the passphrase and a random salt, 64 bytes: the first 32
 * are the AES-256-GCM key (NIST SP 800-38D, 96-bit random IV), the last 32 an HMAC-SHA256 key
 * whose MAC over salt and IV (`keyCheck`) tells a wrong passphrase from a damaged file.
 *
 * The plaintext: a 4-byte big-endian length, the manifest JSON, then each file's bytes in
 * manifest order. Each file has its SHA-256 in the manifest. Keys held in an HSM are listed with
 * `kind: 'pkcs11'` and a reference only: no key bytes of theirs are ever in a backup.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { EdgeidError } from '../../protocol/errors/index.js';

const MAGIC = 'EDGEID-BACKUP-1\n';
/** scrypt cost: N = 2^15, r = 8, p = 1 (about 32 MiB and 0.1 s; RFC 7914 §2 recommends N ≥ 2^14 for interactive use). */
const SCRYPT = { N: 1 << 15, r: 8, p: 1 } as const;
const SCRYPT_MAXMEM = 64 * 1024 * 1024;
export const MIN_PASSPHRASE = 12;

export interface BackupHeader {
  format: 1;
  createdAt: string;
  /** The audit chain head inside the backed-up database (null: no audit rows yet). */
  auditHead: { seq: number; hash: string } | null;
  /** Schema version of the backed-up database (store/migrations). */
  schemaVersion: number;
  kdf: { name: 'scrypt'; salt: string; N: number; r: number; p: number };
  iv: string;
  keyCheck: string;
}

/** A CA key as the backup lists it: a file inside the backup, or a reference to an HSM key (no bytes). */
export type BackupKey = { name: string; kind: 'file'; file: string } | { name: string; kind: 'pkcs11'; ref: Record<string, string> };

export interface BackupFile {
  /** Path relative to the data dir, '/'-separated (e.g. `edgeid.db`, `ca/root.key`). */
  name: string;
  /** Mode to restore with. */
  mode: number;
  data: Buffer;
}

export interface BackupManifest {
  files: { name: string; mode: number; size: number; sha256: string }[];
  keys: BackupKey[];
}

function derive(passphrase: string, salt: Buffer, p: { N: number; r: number; p: number } = SCRYPT): Promise<{ enc: Buffer; mac: Buffer }> {
  return new Promise((resolve, reject) =>
    scrypt(passphrase.normalize('NFC'), salt, 64, { N: p.N, r: p.r, p: p.p, maxmem: SCRYPT_MAXMEM }, (err, key) =>
      err ? reject(err) : resolve({ enc: key.subarray(0, 32), mac: key.subarray(32) }),
    ),
  );
}

const keyCheck = (mac: Buffer, salt: Buffer, iv: Buffer) => createHmac('sha256', mac).update(salt).update(iv).digest();

/** A passphrase that is long enough, or backup_passphrase_missing. */
export function checkPassphrase(p: string | undefined | null): string {
  if (typeof p !== 'string' || [...p].length < MIN_PASSPHRASE) {
    throw new EdgeidError('backup_passphrase_missing', `a backup passphrase of at least ${MIN_PASSPHRASE} characters is required`);
  }
  return p;
}

/**
 * The passphrase from `file` (its first line; the file must not be readable by group or others)
 * or from EDGEID_BACKUP_PASSPHRASE.
 */
export function readPassphrase(file: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  if (file !== undefined) {
    let st;
    try {
      st = statSync(file);
    } catch (e) {
      throw new EdgeidError(
        'backup_passphrase_missing',
        `cannot read the passphrase file ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
      );
    }
    if ((st.mode & 0o077) !== 0) {
      throw new EdgeidError(
        'backup_passphrase_missing',
        `the passphrase file ${file} is readable by others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it`,
      );
    }
    return checkPassphrase(readFileSync(file, 'utf8').split(/\r?\n/)[0]);
  }
  return checkPassphrase(env.EDGEID_BACKUP_PASSPHRASE || undefined);
}

/** Builds the encrypted backup file. */
export async function sealBackup(p: {
  passphrase: string;
  createdAt: Date;
  auditHead: BackupHeader['auditHead'];
  schemaVersion: number;
  files: BackupFile[];
  keys: BackupKey[];
}): Promise<Buffer> {
  const salt = randomBytes(16);
  const iv = randomBytes(12);
  const { enc, mac } = await derive(checkPassphrase(p.passphrase), salt);
  const header: BackupHeader = {
    format: 1,
    createdAt: p.createdAt.toISOString(),
    auditHead: p.auditHead,
    schemaVersion: p.schemaVersion,
    kdf: { name: 'scrypt', salt: salt.toString('base64'), ...SCRYPT },
    iv: iv.toString('base64'),
    keyCheck: keyCheck(mac, salt, iv).toString('base64'),
  };
  const headerBytes = Buffer.from(MAGIC + JSON.stringify(header) + '\n', 'utf8');
  const manifest: BackupManifest = {
    files: p.files.map((f) => ({
      name: f.name,
      mode: f.mode,
      size: f.data.length,
      sha256: createHash('sha256').update(f.data).digest('hex'),
    })),
    keys: p.keys,
  };
  const m = Buffer.from(JSON.stringify(manifest), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(m.length);
  const cipher = createCipheriv('aes-256-gcm', enc, iv);
  cipher.setAAD(headerBytes);
  const parts = [headerBytes, cipher.update(len), cipher.update(m)];
  for (const f of p.files) parts.push(cipher.update(f.data));
  parts.push(cipher.final(), cipher.getAuthTag());
  return Buffer.concat(parts);
}

/** The header of a backup file, read without the passphrase (backup_corrupt if it is not one). */
export function readHeader(file: Buffer): { header: BackupHeader; headerBytes: Buffer } {
  const corrupt = (why: string) => new EdgeidError('backup_corrupt', `not a usable edgeid backup: ${why}`);
  if (!file.subarray(0, MAGIC.length).equals(Buffer.from(MAGIC))) throw corrupt('it does not start with the edgeid backup signature');
  const end = file.indexOf(0x0a, MAGIC.length);
  if (end < 0) throw corrupt('the header is truncated');
  let header: BackupHeader;
  try {
    header = JSON.parse(file.subarray(MAGIC.length, end).toString('utf8')) as BackupHeader;
  } catch {
    throw corrupt('the header is not JSON');
  }
  if (
    header?.format !== 1 ||
    header.kdf?.name !== 'scrypt' ||
    typeof header.kdf.salt !== 'string' ||
    typeof header.iv !== 'string' ||
    typeof header.keyCheck !== 'string' ||
    ![header.kdf.N, header.kdf.r, header.kdf.p].every((n) => Number.isInteger(n) && n > 0) ||
    header.kdf.N > 1 << 20 ||
    header.kdf.r > 32 ||
    header.kdf.p > 16
  ) {
    throw corrupt('the header has an unknown format or KDF parameters');
  }
  return { header, headerBytes: file.subarray(0, end + 1) };
}

/**
 * Opens a backup: backup_passphrase_wrong when the passphrase does not derive the key the file was
 * made with, backup_corrupt when anything was changed or cut off (GCM tag, per-file SHA-256).
 */
export async function openBackup(
  file: Buffer,
  passphrase: string,
): Promise<{ header: BackupHeader; manifest: BackupManifest; files: BackupFile[] }> {
  const { header, headerBytes } = readHeader(file);
  const salt = Buffer.from(header.kdf.salt, 'base64');
  const iv = Buffer.from(header.iv, 'base64');
  let keys: { enc: Buffer; mac: Buffer };
  try {
    keys = await derive(passphrase, salt, header.kdf);
  } catch (e) {
    // scrypt refuses parameters it cannot use (e.g. N not a power of two): a damaged header
    if (e instanceof EdgeidError) throw e;
    throw new EdgeidError('backup_corrupt', `the backup's key derivation parameters are unusable: ${(e as Error).message}`);
  }
  const { enc, mac } = keys;
  const check = Buffer.from(header.keyCheck, 'base64');
  const want = keyCheck(mac, salt, iv);
  if (check.length !== want.length || !timingSafeEqual(check, want)) throw new EdgeidError('backup_passphrase_wrong');
  const body = file.subarray(headerBytes.length);
  if (body.length < 16 + 4) throw new EdgeidError('backup_corrupt', 'the backup is truncated');
  const decipher = createDecipheriv('aes-256-gcm', enc, iv);
  decipher.setAAD(headerBytes);
  decipher.setAuthTag(body.subarray(body.length - 16));
  let plain: Buffer;
  try {
    plain = Buffer.concat([decipher.update(body.subarray(0, body.length - 16)), decipher.final()]);
  } catch {
    throw new EdgeidError('backup_corrupt', 'the backup failed its integrity check (changed or truncated)');
  }
  const mLen = plain.readUInt32BE(0);
  const manifest = JSON.parse(plain.subarray(4, 4 + mLen).toString('utf8')) as BackupManifest;
  const files: BackupFile[] = [];
  let at = 4 + mLen;
  for (const f of manifest.files) {
    const data = plain.subarray(at, at + f.size);
    at += f.size;
    if (data.length !== f.size || createHash('sha256').update(data).digest('hex') !== f.sha256) {
      throw new EdgeidError('backup_corrupt', `the backup's copy of ${f.name} does not match its checksum`);
    }
    // names are relative paths inside the data dir: nothing absolute, no '..'
    if (!/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(f.name) || f.name.split('/').some((s) => s === '..' || s === '.')) {
      throw new EdgeidError('backup_corrupt', `the backup names a file outside the data dir: ${JSON.stringify(f.name).slice(0, 80)}`);
    }
    files.push({ name: f.name, mode: f.mode & 0o777, data: Buffer.from(data) });
  }
  if (at !== plain.length) throw new EdgeidError('backup_corrupt', 'the backup has bytes its manifest does not list');
  return { header, manifest, files };
}
