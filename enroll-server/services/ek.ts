/**
 * The EK trust store (TPM makers' CA certificates built in, plus the configuration's and the
 * operators' own) and supplier manifests (EKs that may enroll once without a token).
 *
 * Trust store rules:
 * - a self-signed certificate is a trust anchor;
 * - a built-in certificate whose issuer is another built-in certificate is an intermediate: it
 *   only helps to build a chain to an anchor;
 * - a built-in CA certificate whose issuer was not published with it (e.g. Infineon's "IFX TPM
 *   EK Root CA", STMicro's "STM TPM EK Root CA", the Nationz and Alibaba manufacturing CAs) is an
 *   anchor itself: the maker published it as the top of its EK chains;
 * - roots in ek.roots (configuration) and added with `edgeid-admin ek-roots add` are anchors;
 *   ek.intermediates are intermediates; `ek-roots remove` of a built-in one switches it off.
 * Every certificate of a chain, anchor included, must be valid at enrollment time
 * (verifyEkCertificate): an EK certificate under an expired maker CA is refused with
 * ek_cert_expired. Such TPMs enroll in a zone that opted out (requireEkCertificate: false).
 */
import { createHash, createPublicKey, randomBytes, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { EkAllowEntry, EkAllowImportRequest, EkAllowImportResponse, EkRootAddRequest, EkRootView } from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import { ekIdentity } from '../../protocol/tpm/ekidentity.js';
import { parsePublic } from '../../protocol/tpm/public.js';
import type { ZonePolicy } from '../config.js';
import { BUILTIN_EK_CAS } from '../ek-roots/builtin.js';
import type { EkAllowRecord } from '../store/store.js';
import { audited } from './audit.js';
import { zoneOf, type RequestMeta, type ServerContext } from './context.js';

export interface EkCa {
  fingerprint: string;
  der: Buffer;
  subject: string;
  issuer: string;
  notAfter: Date;
  role: 'anchor' | 'intermediate';
  source: 'builtin' | 'config' | 'operator';
  /** built-in file name, config path or operator */
  origin: string;
  disabled: boolean;
}

const fingerprint = (der: Buffer): string => createHash('sha256').update(der).digest('hex');

function certOf(der: Buffer): X509Certificate {
  return new X509Certificate(der);
}

/**
 * The role of each certificate of a maker's set (see the rules above): self-signed → anchor;
 * issued by another certificate of the set → intermediate; issuer not in the set → anchor.
 */
export function classifyEkCas(set: ReadonlyArray<{ origin: string; der: Buffer }>, source: EkCa['source']): EkCa[] {
  const certs = set.map((c) => ({ ...c, x: certOf(c.der) }));
  return certs.map(({ origin, der, x }) => {
    const selfSigned = x.subject === x.issuer && x.checkIssued(x) && x.verify(x.publicKey);
    const hasIssuer = !selfSigned && certs.some((o) => o.x !== x && x.checkIssued(o.x) && x.verify(o.x.publicKey));
    return {
      fingerprint: fingerprint(der),
      der,
      subject: x.subject.replace(/\n/g, ', '),
      issuer: x.issuer.replace(/\n/g, ', '),
      notAfter: new Date(x.validTo),
      role: hasIssuer ? 'intermediate' : 'anchor',
      source,
      origin,
      disabled: false,
    };
  });
}

let builtinCache: EkCa[] | null = null;

/** The built-in TPM makers' CA certificates (enroll-server/ek-roots/) with their role (classified once per process). */
export function builtinEkCas(): EkCa[] {
  builtinCache ??= classifyEkCas(
    BUILTIN_EK_CAS.map((c) => ({ origin: c.file, der: Buffer.from(c.der, 'base64') })),
    'builtin',
  );
  return builtinCache.map((c) => ({ ...c }));
}

function pemBlocks(text: string): Buffer[] {
  return (text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((b) =>
    Buffer.from(certOf(Buffer.from(b)).raw),
  );
}

function loadFile(path: string): Buffer[] {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new EdgeidError('config_invalid', `config: ek: cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    const blocks = pemBlocks(bytes.toString('latin1'));
    return blocks.length ? blocks : [Buffer.from(certOf(bytes).raw)];
  } catch {
    throw new EdgeidError('config_invalid', `config: ek: ${path} holds no certificate`);
  }
}

function caFrom(der: Buffer, role: EkCa['role'], source: EkCa['source'], origin: string): EkCa {
  const x = certOf(der);
  return {
    fingerprint: fingerprint(der),
    der,
    subject: x.subject.replace(/\n/g, ', '),
    issuer: x.issuer.replace(/\n/g, ', '),
    notAfter: new Date(x.validTo),
    role,
    source,
    origin,
    disabled: false,
  };
}

/** Every certificate of the EK trust store: built-in, configured and the operators' changes. */
export async function ekTrustEntries(ctx: ServerContext): Promise<EkCa[]> {
  const out: EkCa[] = ctx.config.ek.builtinRoots ? builtinEkCas() : [];
  for (const p of ctx.config.ek.roots) for (const der of loadFile(p)) out.push(caFrom(der, 'anchor', 'config', p));
  for (const p of ctx.config.ek.intermediates) for (const der of loadFile(p)) out.push(caFrom(der, 'intermediate', 'config', p));
  for (const r of await ctx.store.listEkRoots()) {
    if (r.kind === 'disabled') {
      for (const e of out) if (e.fingerprint === r.fingerprint) e.disabled = true;
    } else if (r.der && !out.some((e) => e.fingerprint === r.fingerprint && e.role === 'anchor')) {
      out.push(caFrom(r.der, 'anchor', 'operator', r.addedBy));
    }
  }
  return out;
}

/** Rebuilds ctx.ekTrust from the store's entries (at start and after each ek-roots change). */
export async function reloadEkTrust(ctx: ServerContext): Promise<void> {
  const live = (await ekTrustEntries(ctx)).filter((e) => !e.disabled);
  ctx.ekTrust = {
    roots: live.filter((e) => e.role === 'anchor').map((e) => e.der),
    intermediates: live.filter((e) => e.role === 'intermediate').map((e) => e.der),
  };
}

/** Whether an enrollment into this zone needs an EK certificate that chains to the store. */
export function ekCertRequired(ctx: ServerContext, zone: ZonePolicy): boolean {
  return zone.requireEkCertificate ?? ctx.ekRequireDefault;
}

function view(e: EkCa): EkRootView {
  return {
    fingerprint: e.fingerprint,
    subject: e.subject,
    issuer: e.issuer,
    notAfter: e.notAfter.toISOString(),
    role: e.role,
    source: e.source,
    origin: e.origin,
    disabled: e.disabled,
  };
}

export async function listEkRoots(ctx: ServerContext, meta: RequestMeta & { actor: string }): Promise<{ roots: EkRootView[] }> {
  return audited(ctx, { event: 'admin.ek-roots.list', actor: meta.actor, ip: meta.ip }, async () => ({
    roots: (await ekTrustEntries(ctx)).map(view),
  }));
}

/** Adds a trust anchor (PEM or base64 DER); it must be a CA certificate. Re-enables a disabled built-in one. */
export async function addEkRoot(ctx: ServerContext, req: EkRootAddRequest, meta: RequestMeta & { actor: string }): Promise<EkRootView> {
  return audited(ctx, { event: 'admin.ek-roots.add', actor: meta.actor, ip: meta.ip }, async (a) => {
    let der: Buffer;
    let x: X509Certificate;
    try {
      const blocks = pemBlocks(req.certificate);
      if (blocks.length > 1) throw new Error('one certificate per call');
      der = blocks[0] ?? Buffer.from(req.certificate.trim(), 'base64');
      x = certOf(der);
      der = Buffer.from(x.raw);
    } catch (e) {
      throw new EdgeidError('ek_root_invalid', `not an X.509 certificate: ${(e as Error).message}`);
    }
    if (!x.ca) throw new EdgeidError('ek_root_invalid', 'the certificate is not a CA certificate (basicConstraints cA is not set)');
    const fp = fingerprint(der);
    const builtin = (ctx.config.ek.builtinRoots ? builtinEkCas() : []).find((e) => e.fingerprint === fp);
    a.details = { fingerprint: fp, subject: x.subject.replace(/\n/g, ', '), builtin: builtin !== undefined };
    if (builtin) await ctx.store.deleteEkRoot(fp, a.okRow());
    else {
      await ctx.store.putEkRoot(
        {
          fingerprint: fp,
          kind: 'anchor',
          der,
          subject: x.subject.replace(/\n/g, ', '),
          notAfter: Date.parse(x.validTo),
          addedBy: meta.actor,
          addedAt: a.time,
        },
        a.okRow(),
      );
    }
    a.recorded();
    await reloadEkTrust(ctx);
    const entry = (await ekTrustEntries(ctx)).find((e) => e.fingerprint === fp)!;
    return view(entry);
  });
}

/** Shortest fingerprint prefix `ek-roots remove` accepts (`ek-roots list` shows 16 hex digits). */
export const EK_ROOT_PREFIX_MIN = 8;

/**
 * The certificate in use (not switched off) whose fingerprint is `fp` or starts with it (hex,
 * any case, colons ignored, at least EK_ROOT_PREFIX_MIN digits): ek_root_unknown when none,
 * ek_root_ambiguous (naming the matches) when several.
 */
export function resolveEkRoot(entries: readonly EkCa[], fp: string): EkCa {
  const wanted = fp.toLowerCase().replace(/:/g, '');
  if (!/^[0-9a-f]+$/.test(wanted) || wanted.length < EK_ROOT_PREFIX_MIN || wanted.length > 64) {
    throw new EdgeidError(
      'ek_root_unknown',
      `not a fingerprint or a prefix of ${EK_ROOT_PREFIX_MIN} to 64 hex digits: ${fp.slice(0, 100)}`,
      {
        fingerprint: fp.slice(0, 100),
      },
    );
  }
  const matches = entries.filter((e) => !e.disabled && e.fingerprint.startsWith(wanted));
  if (matches.length === 0) throw new EdgeidError('ek_root_unknown', undefined, { fingerprint: wanted });
  if (matches.length > 1) {
    throw new EdgeidError(
      'ek_root_ambiguous',
      `${matches.length} certificates have fingerprints starting with ${wanted}: ${matches.map((e) => `${e.fingerprint} (${e.subject})`).join('; ')}`,
      { fingerprint: wanted, matches: matches.map((e) => e.fingerprint) },
    );
  }
  return matches[0]!;
}

/** Removes an operator's anchor, or switches off a built-in / configured certificate (by fingerprint or a unique prefix of it). */
export async function removeEkRoot(ctx: ServerContext, fp: string, meta: RequestMeta & { actor: string }): Promise<EkRootView> {
  return audited(ctx, { event: 'admin.ek-roots.remove', actor: meta.actor, ip: meta.ip, details: { fingerprint: fp } }, async (a) => {
    const entry = resolveEkRoot(await ekTrustEntries(ctx), fp);
    const wanted = entry.fingerprint;
    a.details = { fingerprint: wanted, subject: entry.subject, source: entry.source };
    if (entry.source === 'operator') await ctx.store.deleteEkRoot(wanted, a.okRow());
    else {
      await ctx.store.putEkRoot(
        {
          fingerprint: wanted,
          kind: 'disabled',
          der: null,
          subject: entry.subject,
          notAfter: entry.notAfter.getTime(),
          addedBy: meta.actor,
          addedAt: a.time,
        },
        a.okRow(),
      );
    }
    a.recorded();
    await reloadEkTrust(ctx);
    return view({ ...entry, disabled: entry.source !== 'operator' });
  });
}

// --- supplier manifests ------------------------------------------------------------------------

const MAX_MANIFEST_ENTRIES = 100_000;

/** EK identity of one manifest value: an EK certificate, an SPKI public key, or a TPM2B_PUBLIC. */
export function manifestEkId(value: string, where: string): string {
  const v = value.trim();
  const bad = (why: string): never => {
    throw new EdgeidError('ek_allow_invalid', `${where}: ${why}`, { entry: where });
  };
  if (!v) bad('empty value');
  let key: KeyObject | null = null;
  if (v.includes('-----BEGIN CERTIFICATE-----')) {
    try {
      key = certOf(Buffer.from(v)).publicKey;
    } catch (e) {
      bad(`not an X.509 certificate: ${(e as Error).message}`);
    }
  } else if (v.includes('-----BEGIN PUBLIC KEY-----')) {
    try {
      key = createPublicKey(v);
    } catch (e) {
      bad(`not a public key: ${(e as Error).message}`);
    }
  } else {
    if (!/^[A-Za-z0-9+/=\s]+$/.test(v)) bad('neither PEM nor base64');
    const der = Buffer.from(v.replace(/\s+/g, ''), 'base64');
    try {
      key = certOf(der).publicKey;
    } catch {
      try {
        key = createPublicKey({ key: der, format: 'der', type: 'spki' });
      } catch {
        try {
          // a TPM2B_PUBLIC: the identity is the one enrollment computes (template check included)
          return ekIdentity(parsePublic(der)).id;
        } catch (e) {
          bad(`base64 value is no certificate, SPKI or TPM2B_PUBLIC (${(e as Error).message})`);
        }
      }
    }
  }
  if (!key) bad('no key');
  return createHash('sha256')
    .update(key!.export({ type: 'spki', format: 'der' }))
    .digest('hex');
}

/** RFC 4180 CSV: quoted fields may hold commas, quotes ("") and line breaks (a PEM certificate). */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"' && field === '') quoted = true;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      row.push(field);
      if (row.some((f) => f.trim() !== '')) rows.push(row);
      row = [];
      field = '';
    } else field += c;
  }
  if (quoted) throw new EdgeidError('ek_allow_invalid', 'CSV: a quoted field is not closed');
  row.push(field);
  if (row.some((f) => f.trim() !== '')) rows.push(row);
  return rows;
}

const VALUE_COLUMNS = ['ekcert', 'ek_cert', 'certificate', 'ekpub', 'ek_pub', 'public_key', 'publickey', 'ek'];
const NAME_COLUMNS = ['name', 'serial', 'device', 'hostname'];

/**
 * A supplier manifest: JSON (an array, or {"devices": [...]}, of strings or objects with ekCert /
 * ekPub / certificate / publicKey and an optional name or serial) or CSV with a header row naming
 * those columns. Every entry must be readable, or nothing is imported.
 */
export function parseManifest(content: string, format: 'json' | 'csv' | undefined): { ekId: string; name: string | null; where: string }[] {
  const fmt = format ?? (/^\s*[[{]/.test(content) ? 'json' : 'csv');
  const out: { ekId: string; name: string | null; where: string }[] = [];
  const pick = (o: Record<string, unknown>, keys: string[]): string | null => {
    for (const [k, v] of Object.entries(o)) if (keys.includes(k.toLowerCase()) && typeof v === 'string' && v.trim() !== '') return v;
    return null;
  };
  if (fmt === 'json') {
    let doc: unknown;
    try {
      doc = JSON.parse(content);
    } catch (e) {
      throw new EdgeidError('ek_allow_invalid', `JSON: ${(e as Error).message}`);
    }
    const list = Array.isArray(doc)
      ? doc
      : doc && typeof doc === 'object' && Array.isArray((doc as { devices?: unknown }).devices)
        ? (doc as { devices: unknown[] }).devices
        : null;
    if (!list) throw new EdgeidError('ek_allow_invalid', 'JSON: expected an array or {"devices": [...]}');
    if (list.length > MAX_MANIFEST_ENTRIES) throw new EdgeidError('ek_allow_invalid', `more than ${MAX_MANIFEST_ENTRIES} entries`);
    list.forEach((item, i) => {
      const where = `entry ${i}`;
      if (typeof item === 'string') out.push({ ekId: manifestEkId(item, where), name: null, where });
      else if (item && typeof item === 'object') {
        const o = item as Record<string, unknown>;
        const value = pick(o, VALUE_COLUMNS);
        if (!value) throw new EdgeidError('ek_allow_invalid', `${where}: no ekCert or ekPub`, { entry: where });
        out.push({ ekId: manifestEkId(value, where), name: pick(o, NAME_COLUMNS), where });
      } else throw new EdgeidError('ek_allow_invalid', `${where}: expected a string or an object`, { entry: where });
    });
  } else {
    const rows = parseCsv(content);
    const header = (rows.shift() ?? []).map((h) => h.trim().toLowerCase());
    const vi = header.findIndex((h) => VALUE_COLUMNS.includes(h));
    const ni = header.findIndex((h) => NAME_COLUMNS.includes(h));
    if (vi < 0) throw new EdgeidError('ek_allow_invalid', `CSV: the header row names no EK column (one of ${VALUE_COLUMNS.join(', ')})`);
    if (rows.length > MAX_MANIFEST_ENTRIES) throw new EdgeidError('ek_allow_invalid', `more than ${MAX_MANIFEST_ENTRIES} entries`);
    rows.forEach((r, i) => {
      const where = `row ${i + 2}`;
      out.push({ ekId: manifestEkId(r[vi] ?? '', where), name: ni >= 0 && r[ni]?.trim() ? r[ni]!.trim() : null, where });
    });
  }
  if (out.length === 0) throw new EdgeidError('ek_allow_invalid', 'the manifest lists no device');
  return out;
}

function allowView(e: EkAllowRecord): EkAllowEntry {
  return {
    id: e.id,
    ekId: e.ekId,
    zone: e.zone,
    owner: e.owner,
    name: e.name,
    source: e.source,
    importedBy: e.importedBy,
    importedAt: new Date(e.importedAt).toISOString(),
    tokenId: e.tokenId,
    state: e.tokenId === null ? 'open' : e.usedAt !== null && e.usedAt !== undefined ? 'used' : 'attempted',
    deviceId: e.deviceId ?? null,
  };
}

export async function importEkAllow(
  ctx: ServerContext,
  req: EkAllowImportRequest,
  meta: RequestMeta & { actor: string },
): Promise<EkAllowImportResponse> {
  return audited(
    ctx,
    {
      event: 'admin.ek-allow.import',
      actor: meta.actor,
      ip: meta.ip,
      details: { zone: req.zone, owner: req.owner, file: req.source ?? null },
    },
    async (a) => {
      zoneOf(ctx, req.zone);
      const parsed = parseManifest(req.content, req.format);
      const seen = new Set<string>();
      const entries: EkAllowRecord[] = [];
      for (const p of parsed) {
        if (seen.has(p.ekId)) continue;
        seen.add(p.ekId);
        entries.push({
          id: `ekm-${randomBytes(6).toString('hex')}`,
          ekId: p.ekId,
          zone: req.zone,
          owner: req.owner,
          name: p.name,
          source: `${req.source ?? 'manifest'}:${p.where}`,
          importedBy: meta.actor,
          importedAt: a.time,
          tokenId: null,
        });
      }
      const added = await ctx.store.importEkAllow(entries, (added) =>
        a.okRow({
          zone: req.zone,
          owner: req.owner,
          file: req.source ?? null,
          entries: parsed.length,
          added: added.length,
          ids: added.slice(0, 1000).map((e) => e.id),
        }),
      );
      a.recorded();
      return { added: added.map(allowView), skipped: parsed.length - added.length };
    },
  );
}

export async function listEkAllow(ctx: ServerContext, meta: RequestMeta & { actor: string }): Promise<{ entries: EkAllowEntry[] }> {
  return audited(ctx, { event: 'admin.ek-allow.list', actor: meta.actor, ip: meta.ip }, async () => ({
    entries: (await ctx.store.listEkAllow()).map(allowView),
  }));
}

export async function removeEkAllow(ctx: ServerContext, id: string, meta: RequestMeta & { actor: string }): Promise<{ removed: string }> {
  return audited(ctx, { event: 'admin.ek-allow.remove', actor: meta.actor, ip: meta.ip, details: { entry: id } }, async (a) => {
    const entry = (await ctx.store.listEkAllow()).find((e) => e.id === id);
    if (!entry) throw new EdgeidError('ek_allow_unknown', undefined, { entry: id });
    a.details = { entry: id, ekId: entry.ekId, zone: entry.zone, tokenId: entry.tokenId };
    await ctx.store.removeEkAllow(id, a.time, a.okRow());
    a.recorded();
    return { removed: id };
  });
}
