/**
 * A SoftHSM2 token of its own for a test or a bench: a token directory and a softhsm2.conf in a
 * temp dir (SoftHSM2 reads the file SOFTHSM2_CONF names at C_Initialize, softhsm2.conf(5)), the
 * token initialised with softhsm2-util, the user PIN also in a 0600 file. Debian package softhsm2.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { tmpDir } from './fs.js';

const run = promisify(execFile);

/** The module Debian's softhsm2 package installs (libsofthsm2). */
export const SOFTHSM_MODULE =
  ['/usr/lib/softhsm/libsofthsm2.so', '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so'].find((p) => existsSync(p)) ??
  '/usr/lib/softhsm/libsofthsm2.so';

export interface SoftHsmToken {
  dir: string;
  /** Environment the module needs (SOFTHSM2_CONF). */
  env: { SOFTHSM2_CONF: string };
  module: string;
  label: string;
  pin: string;
  /** The user PIN, mode 0600. */
  pinFile: string;
  /** `ca.pkcs11` of a server config for a key with this label in this token. */
  pkcs11(keyLabel: string, pin?: { pinFile: string } | { pinEnv: string }): Record<string, unknown>;
}

export async function createSoftHsmToken(
  opts: { label?: string; pin?: string; t?: { after(fn: () => Promise<void>): void } } = {},
): Promise<SoftHsmToken> {
  const dir = await tmpDir('edgeid-softhsm-', opts.t);
  const tokens = path.join(dir, 'tokens');
  const conf = path.join(dir, 'softhsm2.conf');
  await mkdir(tokens, { mode: 0o700 });
  await writeFile(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  const label = opts.label ?? 'edgeid-test';
  const pin = opts.pin ?? '461729';
  const env = { SOFTHSM2_CONF: conf };
  await run('softhsm2-util', ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', '88442211'], {
    env: { ...process.env, ...env },
  });
  const pinFile = path.join(dir, 'pin');
  await writeFile(pinFile, pin + '\n', { mode: 0o600 });
  return {
    dir,
    env,
    module: SOFTHSM_MODULE,
    label,
    pin,
    pinFile,
    pkcs11: (keyLabel, p = { pinFile }) => ({ module: SOFTHSM_MODULE, token: label, keyLabel, ...p }),
  };
}
