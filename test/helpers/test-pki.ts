/**
 * A throwaway software PKI (openssl) for tests of the broker plumbing alone. Product certificates
 * come from the edgeid CA and device keys from the TPM; this only stands in where neither matters.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';

const run = promisify(execFile);

export interface TestPki {
  dir: string;
  caFile: string;
  /** key/cert paths for each issued name */
  files(name: string): { cert: string; key: string };
}

export async function makeTestPki(dir: string, leaves: { name: string; cn: string; days?: number }[], caCn = 'test-ca'): Promise<TestPki> {
  const o = (args: string[]) => run('openssl', args, { cwd: dir });
  await o(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca.key']);
  await o(['req', '-x509', '-new', '-key', 'ca.key', '-subj', `/CN=${caCn}`, '-days', '1', '-out', 'ca.pem']);
  for (const { name, cn, days } of leaves) {
    await o(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`]);
    await o(['req', '-new', '-key', `${name}.key`, '-subj', `/CN=${cn}`, '-out', `${name}.csr`]);
    await o(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', String(days ?? 1), '-out', `${name}.pem`]);
  }
  return {
    dir,
    caFile: path.join(dir, 'ca.pem'),
    files: (name) => ({ cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}.key`) }),
  };
}
