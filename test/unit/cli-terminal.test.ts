/**
 * Terminal safety and the printed next step, without processes: `printable` leaves no control
 * character a terminal would obey, `colourEnabled` follows TTY/NO_COLOR/TERM, the agent's status
 * text escapes what came from files, server and broker, and `enroll` names the command that works.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { colourEnabled, jsonText, printable } from '../../protocol/terminal.js';
import { renderStatus, type StatusReport } from '../../agent/commands/status.js';
import { nextStep } from '../../agent/commands/enroll.js';
import { defaultConfig } from '../../agent/config.js';

const CONTROL = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

test('printable turns OSC 52, CSI erase, C1 controls and bidi overrides into visible escapes', () => {
  assert.equal(printable('\x1b]52;c;ZWRnZWlk\x07\x1b[2K1.0'), '\\x1b]52;c;ZWRnZWlk\\x07\\x1b[2K1.0');
  assert.equal(printable('a\x9b2Kb\u202ec\r\n\t\x00\x7f'), 'a\\x9b2Kb\\u202ec\\x0d\\x0a\\x09\\x00\\x7f');
  // the bidi marks reorder text as the overrides do (Unicode TR #9)
  assert.equal(printable('dev\u200fab\u200ecd\u061c'), 'dev\\u200fab\\u200ecd\\u061c');
  assert.equal(printable('plc-gw-17 Linie 3 – Ölpumpe ✓'), 'plc-gw-17 Linie 3 – Ölpumpe ✓', 'ordinary text is unchanged');
  assert.equal(printable(null), 'null');
  fc.assert(
    fc.property(fc.string({ unit: 'binary' }), (s) => {
      assert.doesNotMatch(printable(s), CONTROL);
    }),
  );
});

test('jsonText: the same document as JSON.stringify to a parser, with no raw control character for a terminal', () => {
  const hostile = { agentVersion: '1.0\x9b2J\x9d52;c;ZWRnZWlk\x07\u202eevil\x7f', nested: ['\u2066x\u2069', 'a\\\x85'] };
  const text = jsonText(hostile, 2);
  assert.doesNotMatch(text.replace(/\n/g, ''), CONTROL);
  assert.ok(text.includes('1.0\\u009b2J\\u009d52'), 'C1 controls are \\u escapes');
  assert.deepEqual(JSON.parse(text), hostile);
  fc.assert(
    fc.property(fc.jsonValue(), fc.string({ unit: 'binary' }), (v, s) => {
      const doc = { v, s };
      assert.doesNotMatch(jsonText(doc), CONTROL);
      assert.deepEqual(JSON.parse(jsonText(doc)), JSON.parse(JSON.stringify(doc)));
    }),
  );
});

test('colour only on a TTY, never with NO_COLOR set (non-empty) or TERM=dumb', () => {
  assert.equal(colourEnabled({ isTTY: true }, {}), true);
  assert.equal(colourEnabled({ isTTY: false }, {}), false);
  assert.equal(colourEnabled({}, {}), false);
  assert.equal(colourEnabled({ isTTY: true }, { NO_COLOR: '1' }), false);
  assert.equal(colourEnabled({ isTTY: true }, { NO_COLOR: '' }), true, 'no-color.org: an empty value does not count');
  assert.equal(colourEnabled({ isTTY: true }, { TERM: 'dumb' }), false);
});

test('agent status text escapes values from the state, the server and the broker', () => {
  const evil = '\x1b]52;c;AAAA\x07\x1b[2K';
  const s: StatusReport = {
    enrolled: true,
    stateDir: '/var/lib/edgeid',
    running: false,
    pid: null,
    agentVersion: evil,
    device: { id: `dev-${evil}`, zone: evil, enrolledAt: evil } as unknown as StatusReport['device'],
    server: `https://${evil}`,
    certificate: { serial: evil, notBefore: '', notAfter: '', secondsLeft: 10, expired: false },
    renewal: {
      next: null,
      consecutiveFailures: 0,
      last: { ok: false, code: evil, at: evil, reason: evil } as never,
      total: 1,
      tpmCommandsPerRenewal: 6,
    },
    mqtt: { state: 'closed', url: evil, serial: null, connectedAt: null, connects: 0, lastError: evil },
    outbox: { pending: 0, pendingBytes: 0, dropped: 0, tooLarge: 0, delivered: 0, maxMessages: 0 },
    control: { accepted: 0, ignored: 1, lastIgnored: { code: evil } as never },
    posture: { os: { PRETTY_NAME: evil }, kernel: evil, agentHash: evil, configHash: evil },
    updatedAt: '',
  } as StatusReport;
  const text = renderStatus(s);
  assert.doesNotMatch(text.replace(/\n/g, ''), CONTROL);
  assert.ok(text.includes('\\x1b]52;c;AAAA\\x07'));
});

test("enroll's next step starts the agent on the same state dir and TPM, quoted for the shell", () => {
  const config = { ...defaultConfig(), stateDir: '/tmp/agent state', tcti: 'swtpm:host=127.0.0.1,port=2321' };
  assert.equal(
    nextStep(config, undefined),
    "start the agent: edgeid-agent run --state '/tmp/agent state' --tcti swtpm:host=127.0.0.1,port=2321",
  );
  assert.equal(
    nextStep({ ...config, stateDir: '/srv/s' }, '/etc/edgeid/agent.json'),
    'start the agent: edgeid-agent run --config /etc/edgeid/agent.json --state /srv/s --tcti swtpm:host=127.0.0.1,port=2321',
  );
  // on the defaults the systemd unit is the same command
  assert.match(
    nextStep(defaultConfig(), undefined),
    /^start the agent: edgeid-agent run --state \/var\/lib\/edgeid {3}\(or: systemctl enable --now edgeid-agent\)$/,
  );
  assert.equal(
    nextStep({ ...defaultConfig(), tcti: 'device:/dev/tpmrm0' }, undefined).includes('--tcti'),
    false,
    'the default TPM needs no --tcti',
  );
});
