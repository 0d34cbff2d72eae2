import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkArgs } from '../../scripts/harness/bench.js';

function withArgv(args: string[], fn: () => void): void {
  const saved = process.argv;
  process.argv = ['node', 'bench', ...args];
  try {
    fn();
  } finally {
    process.argv = saved;
  }
}

test('bench options: known ones pass, a misspelt one or a missing value is refused by name', () => {
  const check = () => checkArgs(['--quick'], ['--devices', '--minutes']);
  withArgv(['--quick', '--devices', '100', '--minutes', '5'], check);
  withArgv([], check);
  withArgv(['--device', '100'], () => assert.throws(check, /unknown option "--device"; known: --quick, --devices N, --minutes N/));
  withArgv(['--devices'], () => assert.throws(check, /--devices needs a value/));
  withArgv(['--devices', '--quick'], () => assert.throws(check, /--devices needs a value/));
  withArgv(['100'], () => assert.throws(check, /unknown option "100"/));
});
