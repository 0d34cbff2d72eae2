import https from 'node:https';

/** One JSON request over HTTPS pinned to `ca`; the body is parsed when it is JSON, else the text. */
export function httpsJson<T = any>(
  method: string,
  url: URL | string,
  opts: { ca: string; body?: unknown; bearer?: string },
): Promise<{ status: number; body: T }> {
  return new Promise((resolve, reject) => {
    const data = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
    const headers: Record<string, string | number> = {
      ...(opts.bearer ? { authorization: `Bearer ${opts.bearer}` } : {}),
      ...(data ? { 'content-type': 'application/json', 'content-length': data.length } : {}),
    };
    const req = https.request(url, { method, ca: opts.ca, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          /* not JSON */
        }
        resolve({ status: res.statusCode ?? 0, body: parsed as T });
      });
    });
    req.on('error', reject);
    req.end(data);
  });
}
