/**
 * Secrets a test run created (admin tokens, enrollment tokens and their secret halves), and the
 * check that no log contains any of them. The harness records every secret it sees pass by (the
 * server's admin token, tokens from the admin API and edgeid-admin) and checks the logs it
 * collects (the server process's output on stop, an agent's output on exit), so every test that
 * uses the harness is covered without asking for it. Errors name the secret by what it is, never
 * by its value.
 */

const secrets = new Map<string, string>();

/** Shorter strings could occur by chance; every secret edgeid makes is longer. */
const MIN_LENGTH = 16;

export function recordSecret(value: string, what: string): void {
  if (value.length >= MIN_LENGTH) secrets.set(value, what);
}

/** An enrollment token `<id>.<secret>`: the whole token and its secret half. */
export function recordToken(token: string, what = 'enrollment token'): void {
  recordSecret(token, what);
  const dot = token.indexOf('.');
  if (dot > 0) recordSecret(token.slice(dot + 1), `${what} (secret part)`);
}

/**
 * Records the tokens in a tool's output: JSON members named token / adminToken, and the token of
 * an enrollment URI (`edgeid://enroll?token=…`, percent-encoded or not).
 */
export function recordSecretsIn(text: string): void {
  for (const m of text.matchAll(/"(?:token|adminToken)"\s*:\s*"([^"]+)"/g)) recordToken(m[1]!);
  for (const m of text.matchAll(/[?&]token=([^&\s"'#]+)/g)) {
    const raw = m[1]!;
    recordToken(raw);
    try {
      recordToken(decodeURIComponent(raw));
    } catch {
      // not percent-encoded
    }
  }
}

/** What the text gives away (descriptions of the secrets found in it). */
export function secretsIn(text: string): string[] {
  const found: string[] = [];
  for (const [value, what] of secrets) if (text.includes(value)) found.push(what);
  // any private key in PEM (RFC 7468 §10, §11: PKCS #8 and its encrypted form, and the legacy
  // RSA/EC labels), whoever made it: no log holds one
  if (/-----BEGIN (?:ENCRYPTED |RSA |EC )?PRIVATE KEY-----/.test(text)) found.push('a PEM private key');
  return [...new Set(found)];
}

/** Throws when `text` (a log) holds a secret this run created. */
export function assertNoSecrets(where: string, text: string): void {
  const found = secretsIn(text);
  if (found.length > 0) throw new Error(`${where} contains a secret of this test run: ${found.join(', ')}`);
}

export function recordedSecretCount(): number {
  return secrets.size;
}
