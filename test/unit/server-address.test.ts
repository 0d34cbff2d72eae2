import assert from 'node:assert/strict';
import { test } from 'node:test';
import { addressGroup } from '../../enroll-server/services/address.js';

test('addressGroup: IPv4 as it is, IPv4-mapped IPv6 as IPv4, IPv6 by its /64', () => {
  assert.equal(addressGroup('192.0.2.7'), '192.0.2.7');
  assert.equal(addressGroup('::ffff:192.0.2.7'), '192.0.2.7');
  assert.equal(addressGroup('2001:db8:1:2:aaaa:bbbb:cccc:dddd'), '2001:db8:1:2::/64');
  assert.equal(addressGroup('2001:0DB8:0001:0002::1'), '2001:db8:1:2::/64');
  assert.equal(addressGroup('2001:db8::1'), '2001:db8:0:0::/64');
  assert.equal(addressGroup('::1'), '0:0:0:0::/64');
  assert.equal(addressGroup('fe80::1%eth0'), 'fe80:0:0:0::/64');
  assert.equal(addressGroup('64:ff9b::192.0.2.1'), '64:ff9b:0:0::/64');
  // two temporary addresses of one host share a group; another /64 does not
  assert.equal(addressGroup('2001:db8:1:2::a'), addressGroup('2001:db8:1:2:ffff::b'));
  assert.notEqual(addressGroup('2001:db8:1:2::a'), addressGroup('2001:db8:1:3::a'));
  assert.equal(addressGroup(''), '');
  assert.equal(addressGroup(null), '');
  assert.equal(addressGroup('not-an-address'), 'not-an-address');
});
