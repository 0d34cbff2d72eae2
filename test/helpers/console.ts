/** HTTPS to the web console's listener for tests: one request, the answer's status, headers and body (JSON when it parses). */
import https from 'node:https';

export interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: any;
}

export function request(base: string, ca: string, method: string, p: string, o: { headers?: Record<string, string>; body?: string } = {}) {
  return new Promise<Res>((resolve, reject) => {
    // the path as written (a URL object would read //host/… as another host)
    const u = new URL(base);
    const req = https.request({ hostname: u.hostname, port: u.port, path: p, method, ca, headers: o.headers ?? {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body: unknown = text;
        try {
          body = JSON.parse(text);
        } catch {
          /* not JSON */
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
      });
    });
    req.on('error', reject);
    if (o.body !== undefined) req.write(o.body);
    req.end();
  });
}
