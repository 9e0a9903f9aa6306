// weir SDK for JavaScript handlers (componentize-js).
//
// A weir handler is a WebAssembly component that the weir host calls with a
// batch of cluster events that already passed the app's declarative
// pre-filter. The handler gives each event an outcome (done, retry later,
// reject) and asks for effects (restart or reload a service, publish an
// event). The host runs each batch on a fresh instance under fuel, memory,
// time and log caps, acks or retries events, and executes granted effects
// once.
//
// The author writes one function and exports it with `handler`:
//
//   import { handler } from './weir.js';
//   export const handle = handler((batch) => {
//     if (batch.events.some((e) => e.touchesMyDomains())) batch.restart('dovecot.service');
//   });
//
// Build: componentize-js app.js --wit <weir>/wit --world-name handler --disable http fetch-event -o app.wasm
// (without `--disable http fetch-event` the component imports wasi:http, which
// `weir check` refuses).
// The contract is `weir:handler@0.2.0` (wit/handler.wit). This file is the
// same API as the Rust SDK (guests/sdk) and the Python one (guests/python/weir_sdk).

import { id as nodeId, name as nodeName, isLocal } from 'weir:handler/node@0.2.0';
import { mine, isMine } from 'weir:handler/domains@0.2.0';
import { log as hostLog } from 'weir:handler/log@0.2.0';

/** The version of this SDK; `weir new` pins it in the projects it writes. */
export const VERSION = '0.2.0';

const utf8 = new TextDecoder('utf-8', { fatal: true });
const encoder = new TextEncoder();

/**
 * One event of a batch: the WIT record `event` plus helpers.
 * @property {string} id Stable identity (`Nats-Msg-Id`, else `<stream>:<sequence>`).
 * @property {string} name Event name, e.g. `"user-domain-changed"`.
 * @property {string} source Publisher, e.g. `"module/ldapproxy4"`, `"cluster"`; set by the host from the subject.
 * @property {number | undefined} originNode The node the event is about; `undefined` for a cluster-wide event.
 * @property {string[]} domains The event's domains, normalised by the host.
 * @property {Uint8Array} payload The payload bytes as published.
 * @property {number} attempt Delivery attempt, 1-based.
 * @property {bigint} sequence JetStream stream sequence (0 outside a stream).
 * @property {bigint} publishedMs Publish time, ms since the Unix epoch (0 when unknown).
 */
export class Event {
  /** @param {object} raw the event as the bindings give it */
  constructor(raw) {
    this.id = raw.id;
    this.name = raw.name;
    this.source = raw.source;
    this.originNode = raw.originNode;
    this.domains = raw.domains;
    this.payload = raw.payload;
    this.attempt = raw.attempt;
    this.sequence = raw.sequence;
    this.publishedMs = raw.publishedMs;
  }

  /**
   * The payload as UTF-8 text, or `undefined` if it is not valid UTF-8.
   * @returns {string | undefined}
   */
  text() {
    try {
      return utf8.decode(this.payload);
    } catch {
      return undefined;
    }
  }

  /**
   * The payload parsed as JSON.
   * @returns {any}
   * @throws {SyntaxError} if the payload is not UTF-8 JSON (NS8's `acl-changed` carries a bare string).
   */
  json() {
    const text = this.text();
    if (text === undefined) throw new SyntaxError('payload is not UTF-8');
    return JSON.parse(text);
  }

  /** True if the event names this node as its origin; a cluster-wide event is not local. */
  isLocal() {
    return isLocal(this.originNode);
  }

  /** True if any of the event's (normalised) domains is one of the app's. */
  touchesMyDomains() {
    return this.domains.some((d) => isMine(d));
  }
}

/** Key of an effect for collapsing duplicates. */
function effectKey(effect) {
  if (effect.tag === 'publish') {
    return `publish\u0000${effect.val.name}\u0000${Array.from(effect.val.payload).join(',')}`;
  }
  return `${effect.tag}\u0000${effect.val}`;
}

/**
 * One batch of events plus the answer being built for it. Every event starts
 * as done; identical effects collapse into one.
 */
export class Batch {
  /** @param {object[]} events the events as the bindings give them */
  constructor(events) {
    /** @type {Event[]} The events, in stream order. */
    this.events = events.map((e) => new Event(e));
    this.outcomes = this.events.map(() => ({ tag: 'done' }));
    this.effects = [];
    this.seen = new Set();
  }

  /**
   * Redeliver event `index` after `delayMs` ms (the host caps the delay at one
   * hour; after the app's `delivery.max_deliver` deliveries, default 5, the
   * event is dead-lettered).
   * @param {number} index
   * @param {number} delayMs
   * @throws {RangeError} if `index` is out of bounds or `delayMs` is not an
   *   integer from 0 to 2^32 - 1 (the WIT type is `u32`)
   */
  retry(index, delayMs) {
    this.#check(index);
    if (!Number.isInteger(delayMs) || delayMs < 0 || delayMs > 0xffffffff) {
      throw new RangeError(`retry delay ${delayMs} is not a u32 of milliseconds`);
    }
    this.outcomes[index] = { tag: 'retry', val: delayMs };
  }

  /**
   * Reject event `index` for good: the host dead-letters it with `reason`.
   * @param {number} index
   * @param {string} reason
   * @throws {RangeError} if `index` is out of bounds
   */
  reject(index, reason) {
    this.#check(index);
    this.outcomes[index] = { tag: 'reject', val: String(reason) };
  }

  /** Ask for a restart of service `unit`; executed only if the app's `[app.grants] restart` names it. @param {string} unit */
  restart(unit) {
    this.effect({ tag: 'restart', val: String(unit) });
  }

  /** Ask for a reload of service `unit`; executed only if the app's `[app.grants] reload` names it. @param {string} unit */
  reload(unit) {
    this.effect({ tag: 'reload', val: String(unit) });
  }

  /**
   * Publish event `name` with `payload` (a string is sent as UTF-8) as this
   * app (source `module/<app>`); only names the app's `[app.grants] publish`
   * lists are published.
   * @param {string} name
   * @param {string | Uint8Array} payload
   */
  publish(name, payload) {
    const bytes = typeof payload === 'string' ? encoder.encode(payload) : payload;
    this.effect({ tag: 'publish', val: { name: String(name), payload: bytes } });
  }

  /** Add `effect` (a WIT `effect` variant) unless an identical one was asked for. */
  effect(effect) {
    const key = effectKey(effect);
    if (!this.seen.has(key)) {
      this.seen.add(key);
      this.effects.push(effect);
    }
  }

  /** The answer returned to the host (WIT `batch-result`). */
  result() {
    return { outcomes: this.outcomes, effects: this.effects };
  }

  #check(index) {
    if (!Number.isInteger(index) || index < 0 || index >= this.events.length) {
      throw new RangeError(`event index ${index} out of bounds (batch of ${this.events.length})`);
    }
  }
}

/**
 * Wrap `fn(batch)` as the component's exported `handle`. An exception fails
 * the batch like a trap: the host then runs its events one at a time and
 * retries the ones that still fail.
 * @param {(batch: Batch) => void} fn
 * @returns {(events: object[]) => {outcomes: object[], effects: object[]}}
 */
export function handler(fn) {
  return (events) => {
    const batch = new Batch(events);
    fn(batch);
    return batch.result();
  };
}

/** This host's identity. */
export const node = {
  /** This node's numeric id, e.g. 1. @returns {number} */
  id: () => nodeId(),
  /** This node's name, e.g. "node1". @returns {string} */
  name: () => nodeName(),
  /** True if `origin` is this node; `undefined` is never local. */
  isLocal: (origin) => isLocal(origin),
};

/** The domains this app serves on this node. */
export const domains = {
  /** The app's configured domains, normalised. @returns {string[]} */
  mine: () => mine(),
  /** True if `domain` is one of the app's after normalisation. */
  isMine: (domain) => isMine(domain),
};

/** Logging into the host's log, under the app's log budget. */
export const log = {
  trace: (msg) => hostLog('trace', String(msg)),
  debug: (msg) => hostLog('debug', String(msg)),
  info: (msg) => hostLog('info', String(msg)),
  warn: (msg) => hostLog('warn', String(msg)),
  error: (msg) => hostLog('error', String(msg)),
};
