/**
 * SQLite and PostgreSQL behave the same: one scenario that calls every Store operation (tokens,
 * enrollment, devices and their listings and pages, EK roots, manifests, nonces and their bounds,
 * renewal, quarantine, revocation, broker monitors, users, audit listing, retention) runs on a
 * fresh store of each kind and records every answer; the two transcripts must be equal, and a
 * few answers are checked against what they must be.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type {
  AlertOccurrence,
  AlertRecord,
  AuditInput,
  CertificateRecord,
  DeviceRecord,
  Store,
  TokenRecord,
} from '../../enroll-server/store/store.js';
import { STORE_KINDS, usePostgres } from '../helpers/stores.js';

usePostgres();

const NOW = 1_760_000_000_000;
const HOUR = 3600_000;
const audit = (event: string, more: Partial<AuditInput> = {}): AuditInput => ({
  time: NOW,
  actor: 'admin',
  event,
  outcome: 'ok',
  details: { event, nested: { list: [1, 'two', null], text: 'ünïcödé ✓' } },
  ...more,
});

const token = (id: string, zone = 'default', createdAt = NOW): TokenRecord => ({
  id,
  secretHash: createHash('sha256').update(id).digest(),
  zone,
  owner: 'ops',
  name: `name of ${id}`,
  purpose: null,
  createdBy: zone === 'b' ? 'user:bob' : 'admin',
  createdAt,
  expiresAt: NOW + HOUR,
  ekHash: null,
  boundAt: null,
  usedAt: null,
  deviceId: null,
});

const cert = (serial: string, deviceId: string, notAfter = NOW + HOUR): CertificateRecord => ({
  serial,
  deviceId,
  notBefore: NOW,
  notAfter,
  spkiHash: `spki-${serial}`,
  issuedAt: NOW,
  revokedAt: null,
  reason: null,
});

/** Enrolls device `id` (zone, enrolledAt) with its own token and EK. */
async function enroll(s: Store, id: string, zone: string, enrolledAt: number, log: unknown[]): Promise<void> {
  await s.createToken(token(`tok-${id}`, zone, enrolledAt), audit('token.create'));
  log.push(
    await s.startEnrollment({
      tokenId: `tok-${id}`,
      ekHash: `ek-${id}`,
      now: NOW,
      session: {
        id: `ses-${id}`,
        tokenId: `tok-${id}`,
        ekHash: `ek-${id}`,
        ekPub: Buffer.from('ekpub'),
        ekVerified: true,
        ekIssuer: 'CN=maker',
        akPub: Buffer.from(`ak-${id}`),
        secretHash: Buffer.alloc(32, 1),
        nonce: Buffer.alloc(32, 2),
        ip: '10.0.0.1',
        createdAt: NOW,
        expiresAt: NOW + HOUR,
        usedAt: null,
      },
      audit: audit('enroll.start', { deviceId: null, ip: '10.0.0.1' }),
      extendTokenUntil: NOW + 2 * HOUR,
    }),
  );
  log.push(await s.getSession(`ses-${id}`));
  const device: DeviceRecord = {
    id,
    zone,
    owner: 'ops',
    name: `gw ${id}`,
    purpose: 'line 3',
    status: 'active',
    statusReason: null,
    statusChangedAt: NOW,
    ekHash: `ek-${id}`,
    ekPub: Buffer.from('ekpub'),
    ekVerified: true,
    ekIssuer: 'CN=maker',
    akPub: Buffer.from(`ak-${id}`),
    akName: null,
    baseline: { '0': 'aa', '7': 'bb' },
    lastPcrs: { '0': 'aa', '7': 'bb' },
    lastQuoteAt: enrolledAt,
    claims: { agentVersion: '1.2.3', kernel: '6.1' },
    eventLog: Buffer.from([1, 2, 3]),
    baselineEventLog: null,
    baselineWindowUntil: null,
    enrolledBy: 'admin',
    enrolledAt,
    retireBy: zone === 'b' ? NOW - 1 : null,
    lastSeen: null,
    lastIp: null,
  };
  log.push(
    await s.finishEnrollment({
      tokenId: `tok-${id}`,
      sessionId: `ses-${id}`,
      now: NOW,
      device,
      certificate: cert(`c-${id}-0`, id),
      nonce: { value: `n-${id}-0`, deviceId: id, createdAt: NOW, expiresAt: NOW + HOUR, usedAt: null },
      keepNonces: 2,
      audit: audit('enroll.finish', { deviceId: id }),
    }),
  );
}

/** Every Store operation, each answer appended to the transcript. */
async function scenario(s: Store): Promise<unknown[]> {
  const log: unknown[] = [];
  const rec = (label: string, v: unknown) => log.push({ [label]: v });
  await s.setMeta('k', 'v1');
  await s.setMeta('k', 'v2');
  rec('meta', [await s.getMeta('k'), await s.getMeta('missing')]);

  await enroll(s, 'dev-0000000000000003', 'a', NOW - 3 * HOUR, log);
  await enroll(s, 'dev-0000000000000001', 'a', NOW - 3 * HOUR, log);
  await enroll(s, 'dev-0000000000000002', 'b', NOW - 2 * HOUR, log);
  // a token bound to another EK, a spent one, a missing one
  rec(
    'start.other',
    await s.startEnrollment({ tokenId: 'tok-dev-0000000000000001', ekHash: 'other', now: NOW, session: {} as never, audit: audit('x') }),
  );
  await s.createToken(token('tok-spare'), audit('token.create'));
  await s.failEnrollment({
    tokenId: 'tok-spare',
    sessionId: null,
    now: NOW,
    audit: audit('enroll.fail', { outcome: 'fail', reason: 'bad' }),
  });
  rec('start.used', await s.startEnrollment({ tokenId: 'tok-spare', ekHash: 'e', now: NOW, session: {} as never, audit: audit('x') }));
  rec('start.missing', await s.startEnrollment({ tokenId: 'nope', ekHash: 'e', now: NOW, session: {} as never, audit: audit('x') }));
  rec('tokens', await s.listTokens());
  rec('token', await s.getToken('tok-dev-0000000000000001'));
  rec(
    'pageTokens.1',
    (await s.pageTokens({ limit: 2 })).map((t) => t.id),
  );
  rec(
    'pageTokens.2',
    (await s.pageTokens({ limit: 2, after: { time: NOW - 3 * HOUR, id: 'tok-dev-0000000000000001' } })).map((t) => t.id),
  );
  rec(
    'pageTokens.zones',
    (await s.pageTokens({ limit: 10 }, { zones: ['b'] })).map((t) => t.id),
  );
  rec(
    'pageTokens.none',
    (await s.pageTokens({ limit: 10 }, { zones: [] })).map((t) => t.id),
  );
  rec(
    'pageTokens.by',
    (await s.pageTokens({ limit: 10 }, { createdBy: 'user:bob' })).map((t) => t.id),
  );

  // a second enrollment of a live EK
  await s.createToken(token('tok-dup'), audit('token.create'));
  await s.startEnrollment({
    tokenId: 'tok-dup',
    ekHash: 'ek-dev-0000000000000001',
    now: NOW,
    session: { ...((await s.getSession('ses-dev-0000000000000001')) as object), id: 'ses-dup', tokenId: 'tok-dup', usedAt: null } as never,
    audit: audit('enroll.start'),
  });
  rec(
    'finish.live',
    await s.finishEnrollment({
      tokenId: 'tok-dup',
      sessionId: 'ses-dup',
      now: NOW,
      device: { ...(await s.getDevice('dev-0000000000000001'))!, id: 'dev-00000000000000ff' },
      certificate: cert('c-dup', 'dev-00000000000000ff'),
      nonce: { value: 'n-dup', deviceId: 'dev-00000000000000ff', createdAt: NOW, expiresAt: NOW + HOUR, usedAt: null },
      keepNonces: 2,
      audit: audit('enroll.finish'),
    }),
  );

  rec('device', await s.getDevice('dev-0000000000000001'));
  rec(
    'devices',
    (await s.listDevices()).map((d) => d.id),
  );
  rec(
    'devices.status',
    (await s.listDevices({ status: ['active'], zone: 'a' })).map((d) => d.id),
  );
  rec(
    'devices.none',
    (await s.listDevices({ status: [] })).map((d) => d.id),
  );
  rec(
    'devices.retire',
    (await s.listDevices({ retireByAtOrBefore: NOW })).map((d) => d.id),
  );
  rec('ids', await s.listDeviceIds({ zones: ['a', 'b'] }));
  rec('ids.stale', await s.listDeviceIds({ stale: { is: true, before: NOW - 150 * 60_000 } }));
  rec('ids.search', await s.listDeviceIds({ search: '0000003' }));
  rec('ids.search.none', await s.listDeviceIds({ search: '100%_' }));
  rec('ids.search.owner', await s.listDeviceIds({ search: 'OPS' }));
  rec('ids.window.closed', await s.listDeviceIds({ baselineWindow: { open: false, now: NOW } }));
  rec('ids.window.open', await s.listDeviceIds({ baselineWindow: { open: true, now: NOW } }));
  rec('count', await s.countDevicesByStatus());
  rec('noAkName', await s.devicesWithoutAkName());
  await s.setAkName('dev-0000000000000001', '000BAA');
  await s.setAkName('dev-0000000000000001', '000bbb');
  rec('byAk', (await s.findDeviceByAkName('000baa'))?.id);
  rec('liveEk', (await s.findLiveDeviceByEk('ek-dev-0000000000000002', ['x']))?.id);

  // nonces: challenges bounded per requester and never evicting the issued one
  for (let i = 0; i < 6; i++)
    await s.createNonce(
      { value: `ch-${i}`, deviceId: 'dev-0000000000000001', createdAt: NOW + i, expiresAt: NOW + HOUR, usedAt: null },
      2,
      audit('renew.challenge'),
      i % 2 ? 'net-1' : 'net-2',
    );
  for (const v of ['ch-0', 'ch-1', 'ch-2', 'ch-3', 'ch-4', 'ch-5', 'n-dev-0000000000000001-0']) rec(`nonce.${v}`, await s.getNonce(v));
  rec('spend', [await s.spendNonce('ch-3', NOW, audit('spend')), await s.spendNonce('ch-3', NOW), await s.spendNonce('nope', NOW)]);

  // renewals, with a patch that writes every kind of column
  const renew = (nonce: string, n: number) =>
    s.renew({
      nonce,
      now: NOW + n,
      deviceId: 'dev-0000000000000001',
      patch: {
        lastSeen: NOW + n,
        lastIp: '10.0.0.9',
        claims: { agentVersion: '2' } as DeviceRecord['claims'],
        eventLog: Buffer.from([n]),
        lastPcrs: { '0': 'aa', '7': `c${n}` },
        lastQuoteAt: NOW + n,
      },
      certificate: cert(`c-dev-0000000000000001-${n}`, 'dev-0000000000000001', NOW + (n + 1) * HOUR),
      nextNonce: {
        value: `n-dev-0000000000000001-${n}`,
        deviceId: 'dev-0000000000000001',
        createdAt: NOW + n,
        expiresAt: NOW + HOUR,
        usedAt: null,
      },
      keepNonces: 2,
      audit: audit('renew', { deviceId: 'dev-0000000000000001' }),
    });
  rec('renew', [
    await renew('n-dev-0000000000000001-0', 1),
    await renew('n-dev-0000000000000001-1', 2),
    await renew('n-dev-0000000000000001-1', 3),
  ]);
  rec(
    'renew.wrongDevice',
    await s.renew({
      nonce: 'n-dev-0000000000000002-0',
      now: NOW,
      deviceId: 'dev-0000000000000001',
      patch: {},
      certificate: cert('c-wrong', 'dev-0000000000000001'),
      nextNonce: { value: 'n-wrong', deviceId: 'dev-0000000000000001', createdAt: NOW, expiresAt: NOW + HOUR, usedAt: null },
      keepNonces: 2,
      audit: audit('renew'),
    }),
  );
  rec('certs', await s.listCertificates('dev-0000000000000001'));
  rec('lastCert', await s.lastCertificate('dev-0000000000000001'));
  rec('listing', await s.listDevicesWithLastCertificate({ stale: { is: false, before: NOW - HOUR } }));
  rec(
    'page.1',
    (await s.pageDevicesWithLastCertificate({}, { limit: 2 })).map((l) => [l.device.id, l.lastCertificate?.serial]),
  );
  rec(
    'page.2',
    (await s.pageDevicesWithLastCertificate({}, { limit: 2, after: { time: NOW - 3 * HOUR, id: 'dev-0000000000000003' } })).map(
      (l) => l.device.id,
    ),
  );

  // the inventory in every sort and order, paged after the first row
  for (const sort of ['enrolled', 'name', 'lastSeen', 'expiry'] as const) {
    for (const order of ['asc', 'desc'] as const) {
      const first = await s.pageDevicesWithLastCertificate({}, { limit: 1, sort, order });
      const l = first[0]!;
      const key = {
        enrolled: l.device.enrolledAt,
        name: l.device.name ?? '',
        lastSeen: l.device.lastSeen ?? 0,
        expiry: l.lastCertificate?.notAfter ?? 0,
      }[sort];
      rec(`page.${sort}.${order}`, [
        l.device.id,
        ...(await s.pageDevicesWithLastCertificate({}, { limit: 10, sort, order, after: { key, id: l.device.id } })).map(
          (x) => x.device.id,
        ),
      ]);
    }
  }

  // device updates, guarded by status
  rec('update', [
    await s.updateDevice(
      'dev-0000000000000002',
      { baseline: null, baselineWindowUntil: NOW + HOUR, baselineApprovalId: 'ap-1' },
      audit('approve'),
    ),
    await s.updateDevice('dev-0000000000000002', { statusReason: 'x' }, undefined, ['revoked']),
    await s.updateDevice('dev-0000000000000002', {}),
  ]);
  rec('quarantine', [
    await s.quarantineDevice({
      deviceId: 'dev-0000000000000002',
      statusReason: 'pcr',
      reason: 'privilege-withdrawn',
      now: NOW,
      patch: { lastSeen: NOW, lastPcrs: { '0': 'aa', '7': 'ee' }, lastQuoteAt: NOW + 4 },
      audit: audit('q'),
    }),
  ]);
  rec('quarantined', await s.getDevice('dev-0000000000000002'));
  rec(
    'end',
    await s.endDevice({
      deviceId: 'dev-0000000000000001',
      status: 'revoked',
      reason: 'key-compromise',
      statusReason: 'stolen',
      now: NOW + 5,
      audit: audit('revoke'),
    }),
  );
  rec(
    'quarantine.revoked',
    await s.quarantineDevice({
      deviceId: 'dev-0000000000000001',
      statusReason: 'x',
      reason: 'privilege-withdrawn',
      now: NOW,
      patch: {},
      audit: audit('q'),
    }),
  );
  rec('revoked', await s.listRevokedUnexpired(NOW + 6));

  // EK trust store changes
  await s.putEkRoot(
    { fingerprint: 'ff', kind: 'anchor', der: Buffer.from('der'), subject: 'CN=a', notAfter: NOW + HOUR, addedBy: 'admin', addedAt: NOW },
    audit('ek.root'),
  );
  await s.putEkRoot(
    { fingerprint: 'ff', kind: 'disabled', der: null, subject: 'CN=b', notAfter: null, addedBy: 'admin', addedAt: NOW + 1 },
    audit('ek.root'),
  );
  await s.putEkRoot(
    { fingerprint: '0a', kind: 'anchor', der: Buffer.from('x'), subject: 'CN=c', notAfter: null, addedBy: 'admin', addedAt: NOW + 1 },
    audit('ek.root'),
  );
  rec('ekRoots', await s.listEkRoots());
  rec('ekRoot.delete', [await s.deleteEkRoot('0a', audit('ek.root.rm')), await s.deleteEkRoot('0a', audit('ek.root.rm'))]);

  // manifests
  const entry = (id: string, ekId: string) => ({
    id,
    ekId,
    zone: 'a',
    owner: 'ops',
    name: null,
    source: 'm.json:1',
    importedBy: 'admin',
    importedAt: NOW,
    tokenId: null,
  });
  rec(
    'ekAllow.import',
    (
      await s.importEkAllow([entry('al-2', 'ek-x'), entry('al-1', 'ek-y'), entry('al-3', 'ek-x')], (added) =>
        audit('ek.allow', { details: { n: added.length } }),
      )
    ).map((e) => e.id),
  );
  rec('ekAllow.claim', [
    await s.claimEkAllow({ entryId: 'al-1', previousTokenId: null, token: { ...token('mt-1'), ekHash: 'ek-y' } }),
    await s.claimEkAllow({ entryId: 'al-1', previousTokenId: null, token: { ...token('mt-2'), ekHash: 'ek-y' } }),
    await s.claimEkAllow({ entryId: 'al-1', previousTokenId: 'mt-1', token: { ...token('mt-3'), ekHash: 'ek-y' } }),
  ]);
  rec('ekAllow.list', await s.listEkAllow());
  rec('ekAllow.byEk', await s.getEkAllowByEk('ek-y'));
  rec('ekAllow.remove', [
    await s.removeEkAllow('al-1', NOW + 7, audit('ek.allow.rm')),
    await s.removeEkAllow('al-1', NOW + 7, audit('ek.allow.rm')),
  ]);
  rec('ekAllow.token', await s.getToken('mt-3'));

  // broker monitors
  const mon = (serial: string) => ({
    serial,
    name: 'grafana',
    commonName: 'edgeid-monitor-grafana',
    spkiHash: 's',
    notBefore: NOW,
    notAfter: NOW + HOUR,
    createdBy: 'admin',
    createdAt: NOW,
    removedAt: null,
  });
  rec('monitor.add', [await s.addBrokerMonitor(mon('m1'), audit('mon')), await s.addBrokerMonitor(mon('m2'), audit('mon'))]);
  rec('monitor.get', await s.getBrokerMonitor('grafana'));
  rec('monitor.list', await s.listBrokerMonitors());
  rec('monitor.remove', [
    await s.removeBrokerMonitor('grafana', NOW + 1, audit('mon.rm')),
    await s.removeBrokerMonitor('grafana', NOW + 1, audit('mon.rm')),
  ]);
  rec('monitor.again', await s.addBrokerMonitor(mon('m3'), audit('mon')));
  rec('monitor.removed', await s.listRemovedMonitorsUnexpired(NOW + 2));

  // users
  const user = (name: string, zones: string[] | null) => ({
    name,
    role: 'operator' as const,
    zones,
    tokenHash: createHash('sha256').update(name).digest(),
    createdBy: 'admin',
    createdAt: NOW,
    expiresAt: null,
    disabledAt: null,
    disabledBy: null,
    tokenRotatedAt: null,
    bootstrap: false,
  });
  rec('user.create', [
    await s.createUser(user('zoe', ['a']), audit('user')),
    await s.createUser(user('zoe', null), audit('user')),
    await s.createUser(user('al', null), null),
  ]);
  rec('user.update', [
    await s.updateUser('zoe', { disabledAt: NOW, disabledBy: 'admin' }, audit('user.disable')),
    await s.updateUser('nobody', { disabledAt: NOW }, audit('user.disable')),
    await s.updateUser('zoe', {}, audit('user.disable')),
  ]);
  rec('users', await s.listUsers());
  rec('user.byHash', (await s.getUserByTokenHash(createHash('sha256').update('al').digest()))?.name);
  rec('user.get', await s.getUser('zoe'));

  // audit: listing filters, retention, verification
  rec(
    'audit.device',
    (await s.listAudit({ deviceId: 'dev-0000000000000001' })).map((r) => [r.seq, r.event]),
  );
  rec(
    'audit.zone',
    (await s.listAudit({ zones: ['b'], ownActor: 'nobody' })).map((r) => r.seq),
  );
  rec(
    'audit.actor',
    (await s.listAudit({ actor: 'admin', afterSeq: 5, limit: 3 })).map((r) => r.seq),
  );
  rec('audit.rows', await s.listAudit({ limit: 3 }));
  rec(
    'audit.newest',
    (await s.listAudit({ newestFirst: true, beforeSeq: 9, limit: 3 })).map((r) => r.seq),
  );
  await s.createToken(token('tok-expire'), audit('token.create'));
  rec('token.expire', [
    await s.expireToken('tok-expire', NOW + 1, audit('token.expire')),
    await s.expireToken('tok-expire', NOW + 2, audit('token.expire')),
  ]);
  rec('token.expired', (await s.getToken('tok-expire'))?.expiresAt);
  const limit = await s.auditPruneLimit(NOW + 1);
  rec('audit.pruneLimit', limit);
  rec('audit.prune', await s.pruneAudit({ throughSeq: 10, now: NOW + 9, file: 'archive/a.jsonl', audit: audit('audit.prune') }));
  rec('audit.anchor', await s.auditAnchor());
  rec('audit.verify', await s.verifyAudit());
  rec('appended', await s.appendAudit(audit('last', { details: { bad: 'nul\u0000 and lone \ud800', n: Number.NaN } })));
  rec('audit.verify.2', await s.verifyAudit());

  // retention of certificates
  rec(
    'expired',
    (await s.listExpiredCertificates(NOW + 2 * HOUR + 1, 10)).map((c) => c.serial),
  );
  rec('deleted', await s.deleteCertificates(['c-dev-0000000000000001-1', 'c-dev-0000000000000001-2', 'nope'], NOW + 2 * HOUR + 1));

  // alerts: open, bump, a second occurrence while open, acknowledge, the next one opens anew
  const occ = (id: string, key: string, at: number, more: Partial<AlertOccurrence> = {}): AlertOccurrence => ({
    id,
    rule: 'renewal_failures',
    key,
    severity: 'warning',
    deviceId: key,
    zone: key.endsWith('1') ? 'default' : 'b',
    address: '10.0.0.7',
    summary: `failures of ${key}`,
    at,
    fire: true,
    openCount: 5,
    bumpBy: 1,
    ...more,
  });
  const delivery = (a: AlertRecord) => ({
    id: `dl-${a.id}`,
    alertId: a.id,
    body: JSON.stringify({ type: 'alert.opened', id: a.id }),
    state: 'pending' as const,
    attempts: 0,
    nextAt: a.firstSeen,
    lastStatus: null,
    lastError: null,
    createdAt: a.firstSeen,
    deliveredAt: null,
  });
  rec(
    'alerts.commit',
    await s.commitAlerts({
      occurrences: [
        occ('alr-1', 'dev-1', NOW),
        occ('alr-2', 'dev-2', NOW + 1),
        occ('alr-x', 'dev-1', NOW + 5),
        occ('alr-q', 'dev-3', NOW, { fire: false }),
      ],
      state: { cursor: '42', 'window:dev-1': '[1,2]' },
      delivery,
    }),
  );
  rec('alerts.state', await s.getAlertState());
  rec('alerts.list', await s.listAlerts({ state: 'open' }, { limit: 10 }));
  rec(
    'alerts.zone',
    (await s.listAlerts({ zones: ['b'] }, { limit: 10 })).map((a) => a.id),
  );
  rec(
    'alerts.key',
    (await s.listAlerts({ state: 'open', rule: 'renewal_failures', key: 'dev-2' }, { limit: 10 })).map((a) => a.id),
  );
  rec(
    'alerts.page',
    (await s.listAlerts({}, { after: { time: NOW + 1, id: 'alr-2' }, limit: 10 })).map((a) => a.id),
  );
  rec(
    'alerts.count',
    (await s.countOpenAlerts()).sort((a, b) => a.rule.localeCompare(b.rule)),
  );
  rec('alerts.ack', await s.acknowledgeAlert('alr-1', 'user:ann', NOW + 10, audit('alert.ack')));
  rec('alerts.ack.again', await s.acknowledgeAlert('alr-1', 'user:ann', NOW + 11, audit('alert.ack')));
  rec(
    'alerts.reopen',
    (await s.commitAlerts({ occurrences: [occ('alr-3', 'dev-1', NOW + 20)], state: { cursor: null } })).map((a) => a.id),
  );
  rec('alerts.get', await s.getAlert('alr-3'));
  rec(
    'alerts.due',
    (await s.dueAlertDeliveries(NOW + 1, 10)).map((d) => d.id),
  );
  await s.updateAlertDelivery('dl-alr-1', { state: 'delivered', attempts: 1, lastStatus: 204, deliveredAt: NOW + 2 });
  rec('alerts.next', await s.nextAlertDelivery());
  rec('alerts.deliveries', await s.listAlertDeliveries({ limit: 10 }));
  rec('alerts.deliveries.one', await s.listAlertDeliveries({ alertId: 'alr-2', limit: 10 }));
  return log;
}

test('every Store operation answers the same on SQLite and on PostgreSQL', async (t) => {
  const transcripts: unknown[][] = [];
  for (const kind of STORE_KINDS) transcripts.push(await scenario((await kind.open(t)).store));
  const [sqlite, postgres] = transcripts as [unknown[], unknown[]];
  assert.equal(sqlite.length, postgres.length);
  for (let i = 0; i < sqlite.length; i++) assert.deepEqual(postgres[i], sqlite[i], `step ${i}: ${JSON.stringify(sqlite[i]).slice(0, 200)}`);
  // and what the answers must be, on both
  const get = (label: string) => (sqlite.find((x) => typeof x === 'object' && x !== null && label in x) as Record<string, unknown>)[label];
  assert.deepEqual(get('start.other'), 'used');
  assert.deepEqual(get('finish.live'), { liveDevice: 'dev-0000000000000001' });
  assert.deepEqual(get('renew'), [true, true, false]);
  // the last verified quote: written by the renewal and by the quarantine
  const quoted = (label: string) => {
    const d = get(label) as DeviceRecord;
    return [d.lastPcrs, d.lastQuoteAt];
  };
  assert.deepEqual(quoted('quarantined'), [{ '0': 'aa', '7': 'ee' }, NOW + 4]);
  assert.deepEqual((get('listing') as { device: DeviceRecord }[]).find((l) => l.device.id === 'dev-0000000000000001')?.device.lastPcrs, {
    '0': 'aa',
    '7': 'c2',
  });
  assert.deepEqual(get('spend'), [true, false, false]);
  // the oldest challenge of each requesting network was evicted, the issued nonce never
  assert.deepEqual(
    ['ch-0', 'ch-1', 'ch-2', 'ch-5', 'n-dev-0000000000000001-0'].map((v) => get(`nonce.${v}`) === null),
    [true, true, false, false, false],
  );
  assert.deepEqual(get('ekAllow.import'), ['al-2', 'al-1']);
  assert.deepEqual(get('ekAllow.claim'), [true, false, true]);
  assert.deepEqual(get('monitor.add'), [true, false]);
  assert.deepEqual(get('user.create'), [true, false, true]);
  assert.equal((get('audit.verify') as { ok: boolean }).ok, true);
  assert.equal((get('audit.verify.2') as { ok: boolean }).ok, true);
  const listed = get('alerts.list') as AlertRecord[];
  assert.deepEqual(
    listed.map((a) => [a.id, a.count]),
    [
      ['alr-2', 5],
      ['alr-1', 6],
    ],
  );
  assert.equal(get('alerts.ack.again'), null);
  assert.deepEqual(get('alerts.reopen'), ['alr-3']);
  assert.deepEqual(get('alerts.state'), { cursor: '42', 'window:dev-1': '[1,2]' });
  assert.deepEqual(get('alerts.due'), ['dl-alr-1', 'dl-alr-2']);
  assert.deepEqual(get('alerts.key'), ['alr-2']);
  assert.deepEqual(get('audit.newest'), [8, 7, 6]);
  assert.deepEqual(get('token.expire'), [true, false]);
  assert.deepEqual(get('ids.search'), ['dev-0000000000000003']);
  assert.deepEqual(get('ids.search.none'), []);
});
