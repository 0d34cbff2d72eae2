/**
 * The web console in a real browser: Debian's headless Chromium (/usr/bin/chromium) driven by
 * playwright-core, against edgeid-server as a child process (sources, or the bundle with its
 * console/ assets when EDGEID_TEST_BINS=dist). An operator logs in, sees the fleet, revokes a
 * device through the typed-confirmation dialog and sees the device's row change state live in
 * another tab (no reload); a call without the CSRF token is refused; logout ends the session on
 * the server; a viewer sees no action buttons and the API refuses them (forbidden_role); the
 * fleet is sorted by the server (sort and order controls), and a device's detail compares the
 * last quote with its baseline PCR by PCR (equal, or differs after a refused renewal).
 *
 * The device revoked is a real agent (`edgeid-agent run` on swtpm) connected to the Mosquitto the
 * server manages (scripts/harness/revocation.ts deployment): while its row turns "revoked" in the
 * browser the agent receives the signed wipe, empties its state dir and exits 0. The rest of the
 * fleet are software devices (scripts/harness/softenroll.ts).
 *
 * The screenshots for docs/CONSOLE.md (fixed names) are taken on every run, into a temporary
 * directory; `EDGEID_CONSOLE_SCREENSHOTS=docs` writes them over docs/console/*.png (so that a test
 * run leaves the tree as it was unless asked).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { existsSync, mkdirSync, mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium, type Page } from 'playwright-core';
import { REPO, tmpDir } from '../../scripts/harness/fs.js';
import { startRevocationDeployment } from '../../scripts/harness/revocation.js';
import { extendBootPcrs, startSwtpm } from '../../scripts/harness/swtpm.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { agentCli, spawnAgent } from '../helpers/agent.js';
import { createSoftDevice, renew, softClient, type SoftDevice } from '../../scripts/harness/softdevice.js';
import { softEk, softEnroll } from '../../scripts/harness/softenroll.js';

const CHROMIUM = '/usr/bin/chromium';
const SHOTS =
  process.env.EDGEID_CONSOLE_SCREENSHOTS === 'docs' ? path.join(REPO, 'docs/console') : mkdtempSync(path.join(tmpdir(), 'edgeid-shots-'));

async function screenshot(page: Page, name: string) {
  mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, animations: 'disabled' });
  assert.ok(statSync(file).size > 1000, `screenshot ${name} was written`);
}

function getStatus(url: string, ca: string, cookie: string): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca, headers: { cookie } }, (res) => {
        let text = '';
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      })
      .on('error', reject);
  });
}

test('the console in headless Chromium', { timeout: 180_000 }, async (t) => {
  // scripts/setup installs Debian's chromium: a missing browser is a failed setup, not a reason to skip
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is not installed (scripts/setup installs the Debian package chromium)`);
  const big = { max: 1_000_000, window: '1m' };
  const d = await startRevocationDeployment({
    zones: { default: {}, line: { requireEkCertificate: false } },
    rateLimit: { perAddress: big, enroll: big, renew: big, admin: big },
    console: { listen: '127.0.0.1:0' },
  });
  t.after(() => d.stop());
  const srv = d.server;
  const consoleUrl = srv.info.consoleUrl;
  assert.ok(consoleUrl, 'server.json names the console URL');

  const user = async (name: string, role: string) => {
    const r = await srv.admin('POST', '/v1/admin/users', { name, role });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body.token as string;
  };
  const operatorToken = await user('olga', 'operator');
  const viewerToken = await user('victor', 'viewer');

  // the fleet: an agent on swtpm (press-02) and two software devices in zone "line"
  const ids: Record<string, string> = {};
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const stateDir = path.join(await tmpDir('edgeid-console-browser-', t), 'state');
  const agentToken = await srv.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: 'plant-3', name: 'press-02' });
  const enrolled = await agentCli(['enroll', '--uri', agentToken.body.uri, '--state', stateDir, '--tcti', tpm.tcti, '--json']);
  assert.equal(enrolled.code, 0, enrolled.stderr);
  ids['press-02'] = (JSON.parse(enrolled.stdout) as { deviceId: string }).deviceId;
  const agent = spawnAgent(['run', '--state', stateDir, '--tcti', tpm.tcti, '--heartbeat', '1', '--log-level', 'info']);
  t.after(async () => {
    if (agent.child.exitCode === null) agent.child.kill('SIGKILL');
    await agent.exit.catch(() => null);
  });
  const client = softClient(srv.url, srv.caPem);
  const soft: Record<string, SoftDevice> = {};
  for (const name of ['press-01', 'robot-07']) {
    const tok = await srv.admin('POST', '/v1/admin/tokens', { zone: 'line', owner: 'plant-3', name });
    const dev = createSoftDevice();
    const r = await softEnroll(dev, softEk(), client, tok.body.token);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    ids[name] = dev.deviceId!;
    soft[name] = dev;
  }
  await waitFor('the agent on the broker', () => new RegExp(`as ${ids['press-02']} `).test(d.broker.log()), 60_000);

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  t.after(() => browser.close());

  const login = async (token: string) => {
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1180, height: 720 } });
    const page = await context.newPage();
    const csp: string[] = [];
    page.on('console', (m) => {
      if (/Content Security Policy/i.test(m.text())) csp.push(m.text());
    });
    await page.goto(consoleUrl!);
    await page.getByTestId('token').fill(token);
    await page.getByTestId('login').click();
    await page.getByTestId('who').waitFor();
    return { context, page, csp };
  };

  await t.test('an operator sees the fleet, revokes a device, and the list changes live', async () => {
    const { context, page: list, csp } = await login(operatorToken);
    await list.locator('tr[data-device-id]').nth(2).waitFor();
    assert.equal(await list.locator('tr[data-device-id]').count(), 3);
    await list.getByTestId('live').filter({ hasText: 'live' }).waitFor();
    const row = list.locator(`tr[data-device-id="${ids['press-02']}"]`);
    assert.equal(await row.getByTestId('state').textContent(), 'active');
    await screenshot(list, 'devices');
    // the search runs on the server: one row, then the fleet again
    await list.getByTestId('search').fill('ROBOT');
    await list.getByTestId('search').press('Enter');
    await waitFor('the search result', async () => (await list.locator('tr[data-device-id]').count()) === 1);
    assert.equal(await list.locator('tr[data-device-id]').getAttribute('data-device-id'), ids['robot-07']);
    await list.getByTestId('search').fill('');
    await list.getByTestId('search').press('Enter');
    await waitFor('the fleet again', async () => (await list.locator('tr[data-device-id]').count()) === 3);
    // a marker that a reload would lose
    await list.evaluate(() => ((globalThis as unknown as { marker: number }).marker = 42));

    const detail = await context.newPage();
    await detail.goto(`${consoleUrl}#/devices/${ids['press-02']}`);
    await detail.getByTestId('device-title').filter({ hasText: 'press-02' }).waitFor();
    await detail.getByTestId('certificates').locator('tbody tr').first().waitFor();
    await screenshot(detail, 'device-detail');
    await detail.getByTestId('revoke').click();
    const dialog = detail.getByTestId('revoke-dialog');
    await dialog.waitFor();
    await detail.getByTestId('revoke-reason').selectOption('key-compromise');
    await detail.getByTestId('revoke-confirm').fill('press-0');
    assert.equal(await detail.getByTestId('revoke-submit').isDisabled(), true, 'not until the name is typed');
    await detail.getByTestId('revoke-confirm').fill('press-02');
    await screenshot(detail, 'revoke-dialog');
    await detail.getByTestId('revoke-submit').click();
    await detail.getByTestId('detail-state').filter({ hasText: 'revoked' }).waitFor();
    // the agent got the signed wipe: its keys and state are gone and it exits 0
    assert.equal(await agent.exit, 0, `the agent exits 0 after the wipe:\n${agent.log().slice(-2000)}`);
    assert.match(agent.log(), /identity wiped/);
    const left = (await readdir(stateDir)).filter((n) => n !== 'lock');
    assert.deepEqual(left, [], `the state dir is empty but for its lock: ${left.join(',')}`);

    // the other tab: the row changed state without a reload
    await row.getByTestId('state').filter({ hasText: 'revoked' }).waitFor({ timeout: 15_000 });
    assert.equal(await list.evaluate(() => (globalThis as unknown as { marker?: number }).marker), 42, 'no reload');
    assert.equal(await list.locator(`tr[data-device-id="${ids['press-01']}"]`).getByTestId('state').textContent(), 'active');
    const server = await srv.admin('GET', `/v1/admin/devices/${ids['press-02']}`);
    assert.equal(server.body.device.status, 'revoked');
    assert.equal(server.body.device.statusReason, 'revoked: key-compromise');
    const audit = await srv.admin('GET', `/v1/admin/audit?deviceId=${ids['press-02']}`);
    assert.ok(audit.body.rows.some((r: any) => r.event === 'device.revoke' && r.actor === 'user:olga' && r.outcome === 'ok'));

    // tokens: created, shown once with its QR code
    await list.getByTestId('nav-tokens').click();
    await list.getByTestId('token-zone').fill('line');
    await list.getByTestId('token-owner').fill('plant-3');
    await list.getByTestId('token-name').fill('press-04');
    await list.getByTestId('token-create').click();
    await list.getByTestId('qr').waitFor();
    assert.match((await list.getByTestId('token-uri').textContent()) ?? '', /^edgeid:\/\/|^https:\/\//);
    await screenshot(list, 'tokens');

    await list.getByTestId('nav-alerts').click();
    await list.locator('h2', { hasText: 'Alerts' }).waitFor();
    // without an alerts module on the server (GET /v1/admin/alerts 404) the page says so
    const alertsRoute = (await srv.admin('GET', '/v1/admin/alerts?state=open')).status;
    if (alertsRoute === 404) await list.getByTestId('alerts-unavailable').waitFor();
    else await list.locator('[data-testid="alerts"], p.muted').first().waitFor();
    await screenshot(list, 'alerts');

    // a state-changing call without the CSRF token, from the page itself
    const refused = await list.evaluate(async (id) => {
      const r = await fetch(`/console/api/v1/admin/devices/${id}/retire`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{}',
      });
      return { status: r.status, code: ((await r.json()) as { error: { code: string } }).error.code };
    }, ids['press-01']!);
    assert.deepEqual(refused, { status: 403, code: 'csrf_failed' });
    assert.equal((await srv.admin('GET', `/v1/admin/devices/${ids['press-01']}`)).body.device.status, 'active');

    // logout ends the session on the server: the old cookie is refused afterwards
    const cookie = (await context.cookies()).find((c) => c.name === '__Host-edgeid_console');
    assert.ok(cookie && cookie.httpOnly && cookie.secure && cookie.sameSite === 'Strict', JSON.stringify(cookie));
    assert.equal(
      (await getStatus(`${new URL(consoleUrl!).origin}/console/api/session`, srv.caPem, `${cookie.name}=${cookie.value}`)).status,
      200,
    );
    await list.getByTestId('logout').click();
    await list.getByTestId('login').waitFor();
    const after = await getStatus(`${new URL(consoleUrl!).origin}/console/api/session`, srv.caPem, `${cookie.name}=${cookie.value}`);
    assert.deepEqual([after.status, after.body.error.code], [401, 'console_unauthenticated']);
    assert.deepEqual(csp, [], 'no Content-Security-Policy violations');
    await context.close();
  });

  await t.test('a viewer sees no action buttons and the API refuses them', async () => {
    const { context, page } = await login(viewerToken);
    assert.equal(await page.getByTestId('nav-tokens').count(), 0, 'no tokens page for a viewer');
    await page.goto(`${consoleUrl}#/devices/${ids['robot-07']}`);
    await page.getByTestId('device-title').filter({ hasText: 'robot-07' }).waitFor();
    await page.getByTestId('certificates').waitFor();
    for (const b of ['actions', 'revoke', 'retire', 'approve', 'renew-now']) assert.equal(await page.getByTestId(b).count(), 0, b);
    const refused = await page.evaluate(async (id) => {
      const s = (await (await fetch('/console/api/session')).json()) as { csrf: string };
      const r = await fetch(`/console/api/v1/admin/devices/${id}/revoke`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-csrf-token': s.csrf },
        body: JSON.stringify({ reason: 'key-compromise' }),
      });
      return { status: r.status, code: ((await r.json()) as { error: { code: string } }).error.code };
    }, ids['robot-07']!);
    assert.deepEqual(refused, { status: 403, code: 'forbidden_role' });
    assert.equal((await srv.admin('GET', `/v1/admin/devices/${ids['robot-07']}`)).body.device.status, 'active');
    await context.close();
  });

  await t.test('an admin manages users and checks the audit chain', async () => {
    const { context, page } = await login(srv.adminToken);
    await page.getByTestId('nav-users').click();
    const users = page.getByTestId('users');
    await users.locator('td', { hasText: 'victor' }).waitFor();
    assert.match((await users.textContent()) ?? '', /olga.*operator/s);
    await page.getByTestId('nav-audit').click();
    await page.getByTestId('audit').locator('tbody tr').first().waitFor();
    await page.getByTestId('verify').click();
    await page
      .getByTestId('chain')
      .filter({ hasText: /chain intact \(\d+ rows\)/ })
      .waitFor();
    await context.close();
  });

  await t.test('the server sorts the fleet; device detail compares the last quote with the baseline per PCR', async () => {
    const { context, page } = await login(operatorToken);
    const order = () => page.locator('tr[data-device-id]').evaluateAll((rs) => rs.map((r) => r.getAttribute('data-device-id')));
    await page.locator('tr[data-device-id]').nth(2).waitFor();
    assert.deepEqual(await order(), [ids['press-02'], ids['press-01'], ids['robot-07']], 'enrolled, ascending');
    await page.getByTestId('sort').selectOption('name');
    await page.getByTestId('order').selectOption('desc');
    const byNameDesc = [ids['robot-07'], ids['press-02'], ids['press-01']];
    await waitFor('sorted by name, descending', async () => JSON.stringify(await order()) === JSON.stringify(byNameDesc));
    await page.getByTestId('order').selectOption('asc');
    await waitFor('sorted by name, ascending', async () => JSON.stringify(await order()) === JSON.stringify([...byNameDesc].reverse()));

    const compared = async () =>
      Object.fromEntries(
        await page
          .getByTestId('posture')
          .locator('tr[data-pcr]')
          .evaluateAll((rs) => rs.map((r) => [r.getAttribute('data-pcr'), r.querySelector('[data-testid="pcr-compare"]')!.textContent])),
      );
    await page.goto(`${consoleUrl}#/devices/${ids['robot-07']}`);
    await page.getByTestId('device-title').filter({ hasText: 'robot-07' }).waitFor();
    await page.getByTestId('posture').locator('tr[data-pcr]').nth(7).waitFor();
    const equal = Object.fromEntries(['0', '1', '2', '3', '4', '5', '6', '7'].map((p) => [p, 'equal']));
    assert.deepEqual(await compared(), equal);
    // a changed boot chain: the renewal is refused and the device quarantined; PCR 3 differs
    const dev = soft['robot-07']!;
    dev.pcrValues.set(3, Buffer.alloc(32, 0x33));
    const r = await renew(dev, client);
    assert.equal(r.body.error?.code, 'posture_pcr_mismatch', JSON.stringify(r.body));
    await page.getByTestId('detail-state').filter({ hasText: 'quarantined' }).waitFor({ timeout: 15_000 });
    await waitFor('PCR 3 differs', async () => (await compared())['3'] === 'differs');
    assert.deepEqual(await compared(), { ...equal, '3': 'differs' });
    const last = page.getByTestId('posture').locator('tr[data-pcr="3"] td.mono').nth(1);
    assert.equal(await last.textContent(), '33'.repeat(32));
    await context.close();
  });
});
