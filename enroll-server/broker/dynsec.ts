/**
 * Client for Mosquitto's dynamic-security plugin: JSON commands published to
 * `$CONTROL/dynamic-security/v1`, answers on `.../v1/response`, matched by correlationData.
 * The server connects as its own broker identity (client certificate, CN edgeid-broker-admin),
 * which the dynsec file makes the admin.
 */
import { randomUUID } from 'node:crypto';
import { once, type EventEmitter } from 'node:events';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';

export const DYNSEC_TOPIC = '$CONTROL/dynamic-security/v1';
export const DYNSEC_RESPONSE_TOPIC = '$CONTROL/dynamic-security/v1/response';
export const BROKER_ADMIN_CN = 'edgeid-broker-admin';
/** Dynsec role of monitoring tools (each with its own certificate CN): read device and control topics. */
export const MONITOR_ROLE = 'edgeid-monitor';

export interface DynsecAcl {
  acltype: string;
  topic: string;
  allow: boolean;
  priority: number;
}

const aclKey = (a: DynsecAcl) => `${a.acltype} ${a.topic}${a.allow ? '' : ' (deny)'}`;

export interface DynsecCommand {
  command: string;
  [field: string]: unknown;
}

export interface DynsecResponse {
  command: string;
  error?: string;
  data?: unknown;
  correlationData?: string;
}

export class DynsecError extends Error {
  constructor(
    readonly command: string,
    readonly brokerError: string,
  ) {
    super(`dynsec ${command} failed: ${brokerError}`);
    this.name = 'DynsecError';
  }
}

/** The role a device gets: its own telemetry topics and its own control topic, nothing else. */
export function deviceRoleName(deviceId: string): string {
  return `edgeid-device-${deviceId}`;
}

export function deviceAcls(deviceId: string): { acltype: string; topic: string; allow: boolean; priority: number }[] {
  assertTopicSafe(deviceId);
  return [
    { acltype: 'publishClientSend', topic: `devices/${deviceId}/#`, allow: true, priority: 0 },
    { acltype: 'subscribePattern', topic: `edgeid/${deviceId}/control`, allow: true, priority: 0 },
    { acltype: 'publishClientReceive', topic: `edgeid/${deviceId}/control`, allow: true, priority: 0 },
  ];
}

/** The role a quarantined device has instead of its own: its control topic, nothing else. */
export function quarantineRoleName(deviceId: string): string {
  return `edgeid-quarantine-${deviceId}`;
}

export function quarantineAcls(deviceId: string): { acltype: string; topic: string; allow: boolean; priority: number }[] {
  assertTopicSafe(deviceId);
  return [
    { acltype: 'subscribePattern', topic: `edgeid/${deviceId}/control`, allow: true, priority: 0 },
    { acltype: 'publishClientReceive', topic: `edgeid/${deviceId}/control`, allow: true, priority: 0 },
  ];
}

/** Device ids become topic levels and dynsec names: no wildcards, separators or control characters. */
export function assertTopicSafe(deviceId: string): void {
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(deviceId)) throw new Error(`device id not usable as a topic level: ${JSON.stringify(deviceId)}`);
}

export interface DynsecClientOptions {
  url: string;
  /** TLS options for the admin identity (ca, cert, key) and anything else mqtt.js takes. */
  tls: Pick<IClientOptions, 'ca' | 'cert' | 'key' | 'servername' | 'rejectUnauthorized'>;
  /** How long one command may wait for its answer. */
  timeoutMs?: number;
  /** Sent in CONNECT; a broker with `use_username_as_clientid` replaces it with the certificate's CN. */
  clientId?: string;
}

export class DynsecClient {
  private readonly pending = new Map<
    string,
    { resolve: (r: DynsecResponse[]) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }
  >();

  /** The response subscription of the current connection (renewed on every reconnect). */
  private subscribed: Promise<unknown>;

  private constructor(
    private readonly client: MqttClient,
    private readonly timeoutMs: number,
  ) {
    // a clean session loses its subscription with the connection (a broker restart): subscribe
    // again on every connect, and send nothing before the broker confirmed it, or the answer to a
    // command sent right after a reconnect is published before anyone listens for it
    this.subscribed = client.subscribeAsync(DYNSEC_RESPONSE_TOPIC, { qos: 1 });
    this.subscribed.catch(() => undefined);
    client.on('connect', () => {
      this.subscribed = client.subscribeAsync(DYNSEC_RESPONSE_TOPIC, { qos: 1 });
      this.subscribed.catch(() => undefined);
    });
    client.on('message', (topic, payload) => {
      if (topic !== DYNSEC_RESPONSE_TOPIC) return;
      let body: { responses?: DynsecResponse[] };
      try {
        body = JSON.parse(payload.toString('utf8')) as { responses?: DynsecResponse[] };
      } catch {
        return;
      }
      const responses = Array.isArray(body.responses) ? body.responses : [];
      const id = responses[0]?.correlationData;
      const waiter = id ? this.pending.get(id) : undefined;
      if (!waiter || !id) return;
      this.pending.delete(id);
      clearTimeout(waiter.timer);
      waiter.resolve(responses);
    });
  }

  static async connect(opts: DynsecClientOptions): Promise<DynsecClient> {
    const client = await mqtt.connectAsync(opts.url, {
      ...opts.tls,
      clientId: opts.clientId ?? `edgeid-server-${randomUUID().slice(0, 8)}`,
      protocolVersion: 5,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
      clean: true,
      resubscribe: false, // the constructor subscribes on every connect, and sends wait for it
    });
    const dc = new DynsecClient(client, opts.timeoutMs ?? 5000);
    await dc.subscribed;
    return dc;
  }

  get mqtt(): MqttClient {
    return this.client;
  }

  /**
   * Sends commands in one message and returns their answers. A command whose answer carries
   * an error throws DynsecError, unless its error is listed in `tolerate` (e.g. "Client not found"
   * when deleting something already gone).
   */
  async send(commands: DynsecCommand[], tolerate: RegExp | null = null): Promise<DynsecResponse[]> {
    const id = randomUUID();
    const body = { commands: commands.map((c) => ({ ...c, correlationData: id })) };
    const answer = new Promise<DynsecResponse[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`dynsec did not answer ${commands.map((c) => c.command).join(',')} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
    });
    // the answer may time out while the publish is still pending: never an unhandled rejection
    answer.catch(() => undefined);
    if (!this.client.connected) await Promise.race([once(this.client as unknown as EventEmitter, 'connect'), answer]);
    await Promise.race([this.subscribed, answer]);
    await this.client.publishAsync(DYNSEC_TOPIC, JSON.stringify(body), { qos: 1 });
    const responses = await answer;
    for (const r of responses) {
      if (r.error && !(tolerate && tolerate.test(r.error))) throw new DynsecError(r.command, r.error);
    }
    return responses;
  }

  /**
   * Gives the device its client and its one role. Idempotent and never kicks a live session:
   * what already exists is kept, what is missing is added.
   */
  async provisionDevice(deviceId: string): Promise<void> {
    const role = deviceRoleName(deviceId);
    const acls = deviceAcls(deviceId);
    // one message, one round trip: the plugin runs its commands in order
    const answers = await this.send(
      [
        { command: 'createRole', rolename: role, acls },
        ...acls.map((a) => ({ command: 'addRoleACL', rolename: role, ...a })),
        { command: 'createClient', username: deviceId, textname: `edgeid device ${deviceId}`, roles: [{ rolename: role, priority: 0 }] },
      ],
      /already exists/i,
    );
    const created = answers[answers.length - 1];
    if (created?.command !== 'createClient') throw new DynsecError('createClient', 'no answer to createClient');
    if (!created.error) return;
    // The client existed: make sure it has its role (Mosquitto 2.0 answers a duplicate addClientRole with "Internal error").
    const [got] = await this.send([{ command: 'getClient', username: deviceId }]);
    const roles = ((got?.data as { client?: { roles?: { rolename?: string }[] } } | undefined)?.client?.roles ?? []).map((r) => r.rolename);
    if (!roles.includes(role)) await this.send([{ command: 'addClientRole', username: deviceId, rolename: role, priority: 0 }]);
  }

  private async clientRoles(deviceId: string): Promise<string[] | null> {
    const [got] = await this.send([{ command: 'getClient', username: deviceId }], /not found/i);
    if (got?.error) return null;
    return ((got?.data as { client?: { roles?: { rolename?: string }[] } } | undefined)?.client?.roles ?? []).map((r) =>
      String(r.rolename),
    );
  }

  /**
   * Quarantine: the device keeps its client but only the quarantine role (its control topic).
   * Idempotent. Mosquitto's dynsec plugin disconnects a client whose roles change, so the live
   * session ends and a reconnect has only the reduced rights. The device never holds more than
   * before, at no moment: a missing client is created with the quarantine role only (never the
   * full one first), and an existing one loses its full role and gains the quarantine role in one
   * message, removal first. The plugin runs the commands of one message in order, within one pass
   * of the broker's single-threaded loop, so no connection sees a state in between.
   */
  async restrictDevice(deviceId: string): Promise<void> {
    const q = quarantineRoleName(deviceId);
    const full = deviceRoleName(deviceId);
    const acls = quarantineAcls(deviceId);
    // a role nobody holds grants nothing: create (or complete) it first
    await this.send(
      [{ command: 'createRole', rolename: q, acls }, ...acls.map((a) => ({ command: 'addRoleACL', rolename: q, ...a }))],
      /already exists/i,
    );
    const roles = await this.clientRoles(deviceId);
    if (roles === null) {
      await this.send(
        [{ command: 'createClient', username: deviceId, textname: `edgeid device ${deviceId}`, roles: [{ rolename: q, priority: 0 }] }],
        /already exists/i,
      );
      return;
    }
    const commands: DynsecCommand[] = [];
    if (roles.includes(full)) commands.push({ command: 'removeClientRole', username: deviceId, rolename: full });
    // Mosquitto 2.0 answers a duplicate addClientRole with "Internal error": only when missing
    if (!roles.includes(q)) commands.push({ command: 'addClientRole', username: deviceId, rolename: q, priority: 0 });
    if (commands.length > 0) await this.send(commands, /not found/i);
  }

  /** Approval: the device's own role back (provisionDevice), the quarantine role removed. Idempotent. */
  async restoreDevice(deviceId: string): Promise<void> {
    await this.provisionDevice(deviceId);
    await this.send([{ command: 'deleteRole', rolename: quarantineRoleName(deviceId) }], /not found/i);
  }

  /** Deletes the device's client (kicks its live session) and its role: idempotent. */
  async removeDevice(deviceId: string): Promise<void> {
    assertTopicSafe(deviceId);
    await this.send(
      [
        { command: 'deleteClient', username: deviceId },
        { command: 'deleteRole', rolename: deviceRoleName(deviceId) },
        { command: 'deleteRole', rolename: quarantineRoleName(deviceId) },
      ],
      /not found/i,
    );
  }

  /**
   * A monitoring tool's client (username = its certificate CN) with the monitor role. Never
   * touches an existing client: 'exists' when the name is taken (the caller refuses).
   */
  async createMonitorClient(username: string): Promise<'created' | 'exists'> {
    const [r] = await this.send(
      [{ command: 'createClient', username, textname: 'edgeid monitoring tool', roles: [{ rolename: MONITOR_ROLE, priority: 0 }] }],
      /already exists/i,
    );
    return r?.error ? 'exists' : 'created';
  }

  /** Deletes a client (kicks its live session); false when there was none. */
  async deleteClient(username: string): Promise<boolean> {
    const [r] = await this.send([{ command: 'deleteClient', username }], /not found/i);
    return !r?.error;
  }

  /**
   * Brings the server's service roles to `want` (the roles of the current initial dynsec file),
   * for brokers whose dynsec file an older edgeid wrote: a missing role is created; with `exact`,
   * ACLs the role has and `want` does not are removed and missing ones added. Idempotent; returns
   * what it changed (empty: nothing to do).
   *
   * Mosquitto 2.0's dynsec plugin disconnects every client of a role whose ACLs change, this
   * connection too when the role is its own: such changes go out in one message without waiting
   * for answers that would never come, and are checked with getRole once mqtt.js has reconnected.
   */
  async updateServiceRoles(want: { rolename: string; acls: DynsecAcl[]; exact: boolean }[]): Promise<string[]> {
    const changes: string[] = [];
    for (const role of want) {
      const have = await this.roleAcls(role.rolename);
      if (have === null) {
        await this.send([{ command: 'createRole', rolename: role.rolename, acls: role.acls }], /already exists/i);
        changes.push(`created role ${role.rolename}`);
        continue;
      }
      if (!role.exact) continue;
      const wanted = new Set(role.acls.map(aclKey));
      const present = new Set(have.map(aclKey));
      const extra = have.filter((x) => !wanted.has(aclKey(x)));
      const missing = role.acls.filter((x) => !present.has(aclKey(x)));
      if (extra.length === 0 && missing.length === 0) continue;
      const commands: DynsecCommand[] = [
        ...extra.map((a) => ({ command: 'removeRoleACL', rolename: role.rolename, acltype: a.acltype, topic: a.topic })),
        ...missing.map((a) => ({ command: 'addRoleACL', rolename: role.rolename, ...a })),
      ];
      await this.sendExpectingKick(commands);
      const after = await this.roleAclsEventually(role.rolename);
      const afterKeys = new Set((after ?? []).map(aclKey));
      if (after === null || afterKeys.size !== wanted.size || [...wanted].some((k) => !afterKeys.has(k)))
        throw new Error(`role ${role.rolename} was not updated: it has ${JSON.stringify([...afterKeys])}`);
      changes.push(...extra.map((a) => `removed ${aclKey(a)} from ${role.rolename}`));
      changes.push(...missing.map((a) => `added ${aclKey(a)} to ${role.rolename}`));
    }
    return changes;
  }

  /** A role's ACLs, or null when the role does not exist. */
  private async roleAcls(rolename: string): Promise<DynsecAcl[] | null> {
    const [got] = await this.send([{ command: 'getRole', rolename }], /not found/i);
    if (got?.error) return null;
    return ((got?.data as { role?: { acls?: Partial<DynsecAcl>[] } } | undefined)?.role?.acls ?? []).map((a) => ({
      acltype: String(a.acltype),
      topic: String(a.topic),
      allow: a.allow !== false,
      priority: Number(a.priority ?? 0),
    }));
  }

  /** roleAcls, retried while this connection is being re-established. */
  private async roleAclsEventually(rolename: string, attempts = 5): Promise<DynsecAcl[] | null> {
    for (let i = 1; ; i++) {
      try {
        return await this.roleAcls(rolename);
      } catch (e) {
        if (i >= attempts) throw e;
        await new Promise((r) => setTimeout(r, 300));
      }
    }
  }

  /** Publishes commands that may end this session (QoS 0: nothing is resent on reconnect) and waits briefly for that end. */
  private async sendExpectingKick(commands: DynsecCommand[]): Promise<void> {
    let onClose: (() => void) | undefined;
    const closed = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 2000);
      onClose = () => {
        clearTimeout(timer);
        resolve();
      };
      this.client.once('close', onClose);
    });
    try {
      await this.client.publishAsync(DYNSEC_TOPIC, JSON.stringify({ commands }), { qos: 0 });
      await closed;
    } finally {
      if (onClose) this.client.removeListener('close', onClose);
    }
  }

  /** Usernames of every dynsec client. */
  async listClients(): Promise<string[]> {
    const [r] = await this.send([{ command: 'listClients', verbose: false, count: -1 }]);
    const data = (r?.data ?? {}) as { clients?: unknown[] };
    return (data.clients ?? []).map((c) => (typeof c === 'string' ? c : String((c as { username?: string }).username)));
  }

  async close(): Promise<void> {
    for (const [, w] of this.pending) {
      clearTimeout(w.timer);
      w.reject(new Error('dynsec client closed'));
    }
    this.pending.clear();
    await this.client.endAsync(true);
  }
}
