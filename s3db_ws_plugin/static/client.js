/**
 * s3db browser client: WebSocket protocol v1 as a small, dependency-free ES module.
 * Served by the WebSocket plugin at GET /client.js.
 *
 *   import { connect } from "http://127.0.0.1:3001/client.js";
 *   const db = await connect("ws://127.0.0.1:3001/", { token: () => fetchToken() });
 *   const note = await db.insert("notes", { title: "hi" });
 *   const { items, cursor } = await db.list("notes", { filter: { roomId: "r1" }, limit: 50 });
 *   const sub = await db.subscribe("notes", { filter: { roomId: "r1" } });
 *   for await (const event of sub) console.log(event.event, event.data);   // or pass a callback
 *   await sub.unsubscribe();
 *   db.close();
 *
 * Requests resolve with what you asked for (a record, { items, cursor }, a user) or reject with an
 * S3dbError carrying `code`, `details` and `requestId` (plus `retryAfterMs` for RATE_LIMITED).
 * The token (a string or a function returning one or a Promise of one) is sent in an `auth`
 * frame, never in the URL. When the socket drops unexpectedly the client reconnects with
 * exponential backoff and jitter, authenticates again (calling the token function again),
 * resubscribes every live subscription and emits "reconnect". Each subscription remembers the
 * stream position of the last event it got and resubscribes `since` it, so events written while
 * it was disconnected are replayed, in order, once. When the server cannot replay them (its
 * history was lost or is too short) the subscription's iterator yields `{event: "reload"}`, its
 * `onReload` option is called and the client emits "reload": reload what you show (with `list`).
 * Requests in flight when the socket drops reject with
 * CONNECTION_LOST. A 4401 close reconnects with a fresh token when `token` is a function and is
 * final otherwise. With a token function and a JWT carrying `exp`, a fresh token is sent shortly
 * before it expires, so the connection stays open.
 *
 * Channels carry messages and presence between connections, never stored:
 *
 *   const room = await db.join("room:lobby", { info: { color: "#c33" } });
 *   room.members;                                  // Map clientId -> {clientId, userId, info, joinedAt}
 *   room.on("typing", (m) => show(m.from.userId)); // or room.on("member_added", ...), room.on("*", ...)
 *   await room.send("typing", { on: true });
 *   for await (const m of room) console.log(m.event, m.data, m.from);  // when no callback listens
 *   await room.update({ color: "#3c3" });
 *   await room.leave();
 *
 * After a reconnect the client joins every channel again (with its latest info); members that
 * came or went meanwhile are reported as member_added / member_removed.
 */

const EVENT_KINDS = ["insert", "update", "delete"];
const UNAUTHORIZED_CLOSE = 4401;


export class S3dbError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "S3dbError";
    this.code = code;
    this.details = extra.details;
    this.requestId = extra.requestId;
    this.retryAfterMs = extra.retryAfterMs;
    this.errorId = extra.errorId;
  }

  static fromFrame(frame) {
    return new S3dbError(frame.code || "CLIENT_ERROR", frame.message, frame);
  }
}

/** Decode a JWT's `exp` (seconds) without verifying it; null if there is none. */
export function jwtExpiry(token) {
  if (typeof token !== "string" || token.split(".").length !== 3) return null;
  try {
    const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return typeof claims.exp === "number" ? claims.exp : null;
  } catch {
    return null;
  }
}

// -- the query language, enough to route an event to the subscriptions it matches --------------
const MISSING = Symbol("missing");

function lookup(record, path) {
  let value = record;
  for (const part of path.split(".")) {
    if (value === null || typeof value !== "object") return MISSING;
    if (Array.isArray(value)) {
      if (!/^\d+$/.test(part) || Number(part) >= value.length) return MISSING;
      value = value[Number(part)];
    } else {
      if (!Object.prototype.hasOwnProperty.call(value, part)) return MISSING;
      value = value[part];
    }
  }
  return value;
}

function deepEqual(a, b) {
  if (a === MISSING) a = null;
  if (b === MISSING) b = null;
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual(a[k], b[k]));
}

function comparable(a, b) {
  return (typeof a === "number" && typeof b === "number") || (typeof a === "string" && typeof b === "string");
}

function isOperators(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) &&
    Object.keys(value).length > 0 && Object.keys(value).every((k) => k.startsWith("$"));
}

function test(value, operand) {
  if (!isOperators(operand)) return deepEqual(value, operand);
  return Object.entries(operand).every(([op, arg]) => {
    switch (op) {
      case "$eq": return deepEqual(value, arg);
      case "$ne": return !deepEqual(value, arg);
      case "$gt": return comparable(value, arg) && value > arg;
      case "$gte": return comparable(value, arg) && value >= arg;
      case "$lt": return comparable(value, arg) && value < arg;
      case "$lte": return comparable(value, arg) && value <= arg;
      case "$in": return Array.isArray(arg) && arg.some((x) => deepEqual(value, x));
      case "$nin": return Array.isArray(arg) && !arg.some((x) => deepEqual(value, x));
      case "$exists": return (value !== MISSING && value !== null) === Boolean(arg);
      default: throw new Error(`unknown operator ${op}`);
    }
  });
}

/** Whether `record` matches `filter` (s3db's query language). */
export function matches(record, filter) {
  return Object.entries(filter || {}).every(([key, operand]) => {
    if (key.endsWith("[]")) {
      const list = lookup(record, key.slice(0, -2));
      const items = Array.isArray(list) ? list : [];
      const contains = (x) => items.some((item) => deepEqual(item, x));
      if (!isOperators(operand)) return contains(operand);
      return Object.entries(operand).every(([op, arg]) => {
        if (op === "$eq") return contains(arg);
        if (op === "$ne") return !contains(arg);
        if (op === "$in") return arg.some(contains);
        if (op === "$nin") return !arg.some(contains);
        throw new Error(`unknown operator ${op}`);
      });
    }
    return test(lookup(record, key), operand);
  });
}

function safeMatches(record, filter) {
  try {
    return matches(record, filter);
  } catch {
    return false;
  }
}

function stableJson(value) {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${stableJson(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

// -- subscriptions --------------------------------------------------------------------------------
/** Live events of one subscribe: an async iterator, or a callback when one was given. */
export class Subscription {
  constructor(client, resource, filter, events, callback, maxPending, onReload = null) {
    this.client = client;
    this.onReload = onReload;
    this.snapshot = null; // subscribe({snapshot: true}): the first page of matching records
    this.cursor = null; // ... and the cursor of the next page
    this.recovered = null; // the last subscribe's `recovered` (null when it did not resume)
    this._stream = null;
    this.maxPending = maxPending;
    this.resource = resource;
    this.filter = filter || {};
    this.events = events || null;
    this.effectiveFilter = { ...this.filter };
    this.callback = callback || null;
    this.closed = false;
    this._buffer = [];
    this._waiters = [];
    this._end = null; // { error } once closed
  }

  wants(kind) {
    // "leave": an update that took the record out of what the user may see.
    const asked = kind === "leave" ? "update" : kind;
    return this.events === null || this.events.includes(asked);
  }

  /** The stream position this subscription has everything up to: {offset, epoch} or null. */
  get position() {
    return this._stream ? this._stream.position : null;
  }

  _reload(event) {
    if (this.closed) return;
    if (!this.callback) this._push(event); // iterators see it; callbacks keep their event shapes
    if (this.onReload) {
      try {
        this.onReload(this);
      } catch (err) {
        console.error("s3db onReload callback failed", err);
      }
    }
    this.client._emit("reload", this);
  }

  _push(event) {
    if (this.closed) return;
    if (this.callback) {
      try {
        this.callback(event);
      } catch (err) {
        console.error("s3db subscription callback failed", err);
      }
    } else if (this._waiters.length) {
      this._waiters.shift().resolve({ value: event, done: false });
    } else if (this._buffer.length >= this.maxPending) {
      // Never a silent drop: the buffered events are still read, then the iterator throws.
      this._finish(
        new S3dbError("SLOW_CONSUMER", `more than ${this.maxPending} unread events on "${this.resource}": the subscription was closed`),
      );
      this.client._release(this).catch(() => {});
    } else {
      this._buffer.push(event);
    }
  }

  _finish(error = null) {
    if (this.closed) return;
    this.closed = true;
    this._end = { error };
    for (const waiter of this._waiters.splice(0)) {
      if (error) waiter.reject(error);
      else waiter.resolve({ value: undefined, done: true });
    }
    if (error) this.client._emit("error", error, this);
  }

  next() {
    if (this._buffer.length) return Promise.resolve({ value: this._buffer.shift(), done: false });
    if (this._end) {
      return this._end.error ? Promise.reject(this._end.error) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  async return() {
    await this.unsubscribe();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /** Stop receiving events (the server is told unless another subscription shares the stream). */
  async unsubscribe() {
    if (this.closed) return;
    this._finish();
    this._buffer.length = 0;
    await this.client._release(this);
  }

  close() {
    return this.unsubscribe();
  }
}

const MAX_VERSIONS = 10000; // records whose last version a stream remembers

class Stream {
  constructor(resource, filter) {
    this.resource = resource;
    this.filter = filter;
    this.effective = { ...filter };
    this.subs = [];
    this.position = null; // {offset, epoch}: everything up to it was received
    this.live = false; // subscribed on the current socket
    this.versions = new Map(); // record id -> rank of the last version seen
  }

  frame(resume = true) {
    const frame = { type: "subscribe", resource: this.resource };
    if (Object.keys(this.filter).length) frame.filter = this.filter;
    if (!this.subs.some((s) => s.events === null)) {
      frame.events = EVENT_KINDS.filter((k) => this.subs.some((s) => s.events.includes(k)));
    }
    if (resume && this.position) frame.since = { ...this.position };
    return frame;
  }

  /** False for an event this stream already has (at or before its position, or an older version). */
  fresh(event) {
    const pos = this.position;
    if (typeof event.offset === "number" && pos && event.epoch === pos.epoch && event.offset <= pos.offset) return false;
    const id = event.data ? event.data.id : undefined;
    if (!event.version || (typeof id !== "string" && typeof id !== "number")) return true;
    const rank = event.version * 2 + (event.event === "delete" ? 1 : 0);
    const old = this.versions.get(id);
    if (old !== undefined) {
      if (rank <= old && !(event.event === "insert" && old % 2 === 1)) return false;
      this.versions.delete(id);
    }
    this.versions.set(id, rank);
    if (this.versions.size > MAX_VERSIONS) this.versions.delete(this.versions.keys().next().value);
    return true;
  }

  /** Move to the event's position; false when a new epoch begins under this stream (a loss). */
  advance(event) {
    if (typeof event.offset !== "number" || typeof event.epoch !== "string") return true;
    const pos = this.position;
    if (!pos || pos.epoch !== event.epoch) {
      this.position = { offset: event.offset, epoch: event.epoch };
      return !pos;
    }
    if (event.offset > pos.offset) this.position = { offset: event.offset, epoch: event.epoch };
    return true;
  }
}

function positionOf(value) {
  if (value && typeof value === "object" && Number.isInteger(value.offset) && typeof value.epoch === "string") {
    return { offset: value.offset, epoch: value.epoch };
  }
  return null;
}

// -- channels -------------------------------------------------------------------------------------
const PRESENCE_EVENTS = ["member_added", "member_removed", "member_updated"];

/**
 * A joined channel: `members` (a Map clientId -> member), `send`, `update`, `leave`, and its
 * messages and presence events (`{channel, event, data, from, timestamp}`; `from` is
 * `{clientId, userId}` for a message and null for a presence event). Listen with
 * `on(event, fn)` (an event name, or "*" for all), the callback given to `join`, or
 * `for await`: a channel with a callback or a listener keeps nothing for iteration.
 */
export class Channel {
  constructor(client, name, info, receiveOwn, callback, maxPending) {
    this.client = client;
    this.name = name;
    this.info = info ? { ...info } : null;
    this.receiveOwn = Boolean(receiveOwn);
    this.callback = callback || null;
    this.maxPending = maxPending;
    this.members = new Map();
    this.closed = false;
    this._me = null;
    this._listeners = new Map();
    this._buffer = [];
    this._waiters = [];
    this._end = null;
  }

  frame() {
    const frame = { type: "join", channel: this.name };
    if (this.info) frame.info = this.info;
    if (this.receiveOwn) frame.self = true;
    return frame;
  }

  /** Call `fn(message)` for `event` ("*": every event); returns a function that stops it. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event)?.delete(fn);
  }

  /** Send `event` with `data` to the other members (and to this one if it joined with `self`). */
  async send(event = "message", data = null) {
    await this.client.request({ type: "channel:message", channel: this.name, event, data });
  }

  /** Replace this member's presence `info`; resolves with the member. */
  async update(info) {
    const reply = await this.client.request({ type: "channel:update", channel: this.name, info });
    this.info = { ...info };
    const member = reply.member;
    if (member && typeof member.clientId === "string") this.members.set(member.clientId, member);
    return member || {};
  }

  /** Leave the channel; its iterator ends (what it had not read yet is dropped). */
  async leave() {
    if (this.closed) return;
    this._finish();
    this._buffer.length = 0;
    await this.client._leaveChannel(this);
  }

  close() {
    return this.leave();
  }

  /** The reply to a join; on a rejoin, who came or went meanwhile becomes presence events. */
  _joined(reply, again) {
    if (!Array.isArray(reply.members)) return;
    const members = new Map();
    for (const m of reply.members) if (m && typeof m.clientId === "string") members.set(m.clientId, m);
    if (again) {
      const now = Date.now();
      for (const [id, m] of this.members) {
        if (!members.has(id) && id !== this._me) this._push({ channel: this.name, event: "member_removed", data: m, from: null, timestamp: now });
      }
      for (const [id, m] of members) {
        if (!this.members.has(id) && id !== this.client.clientId) this._push({ channel: this.name, event: "member_added", data: m, from: null, timestamp: now });
      }
    }
    this.members = members;
    this._me = this.client.clientId; // this client's id in the list (new with each connection)
  }

  _dispatch(frame) {
    if (typeof frame.event !== "string") return;
    const data = frame.data ?? null;
    let from = frame.from && typeof frame.from === "object" ? frame.from : null;
    if (PRESENCE_EVENTS.includes(frame.event) && data && typeof data.clientId === "string") {
      if (frame.event === "member_removed") this.members.delete(data.clientId);
      else this.members.set(data.clientId, data);
      from = null;
    }
    const timestamp = Number.isInteger(frame.timestamp) ? frame.timestamp : 0;
    this._push({ channel: this.name, event: frame.event, data, from, timestamp });
  }

  _push(message) {
    if (this.closed) return;
    const listeners = [...(this._listeners.get(message.event) || []), ...(this._listeners.get("*") || [])];
    if (this.callback) listeners.unshift(this.callback);
    if (listeners.length || this._listeners.size) {
      for (const fn of listeners) {
        try {
          fn(message);
        } catch (err) {
          console.error("s3db channel callback failed", err);
        }
      }
    } else if (this._waiters.length) {
      this._waiters.shift().resolve({ value: message, done: false });
    } else if (this._buffer.length >= this.maxPending) {
      this._finish(new S3dbError("SLOW_CONSUMER", `more than ${this.maxPending} unread messages on "${this.name}": the channel was left`));
      this.client._leaveChannel(this).catch(() => {});
    } else {
      this._buffer.push(message);
    }
  }

  _finish(error = null) {
    if (this.closed) return;
    this.closed = true;
    this._end = { error };
    for (const waiter of this._waiters.splice(0)) {
      if (error) waiter.reject(error);
      else waiter.resolve({ value: undefined, done: true });
    }
    if (error) this.client._emit("error", error, this);
  }

  next() {
    if (this._buffer.length) return Promise.resolve({ value: this._buffer.shift(), done: false });
    if (this._end) {
      return this._end.error ? Promise.reject(this._end.error) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  async return() {
    await this.leave();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

// -- the client -----------------------------------------------------------------------------------
export class Client {
  /**
   * @param {string} url  ws:// or wss:// address of the server
   * @param {object} options  token (string | () => string | Promise<string>), apiKey,
   *   reconnect (true), backoff ({initial: 500, maximum: 30000, factor: 2, jitter: 0.5} ms),
   *   requestTimeout (10000 ms), refreshMargin (30000 ms), maxPending (10000 unread events per
   *   subscription; one more ends its iterator with SLOW_CONSUMER after the buffered ones)
   */
  constructor(url, options = {}) {
    this.url = url;
    this.safeUrl = url.split("?")[0].replace(/\/\/[^/@]*@/, "//"); // for messages: no credentials
    this.token = options.token ?? null;
    this.apiKey = options.apiKey ?? null;
    this.reconnect = options.reconnect ?? true;
    this.backoff = { initial: 500, maximum: 30000, factor: 2, jitter: 0.5, ...(options.backoff || {}) };
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.refreshMargin = options.refreshMargin ?? 30000;
    this.maxPending = options.maxPending ?? 10000;
    this.state = "idle"; // connecting | open | reconnecting | closed
    this.clientId = null;
    this.user = null;
    this.reconnects = 0;
    this.failure = null;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._streams = new Map();
    this._channels = new Map(); // joined channels, joined again after a reconnect
    this._listeners = new Map();
    this._readyWaiters = [];
    this._currentToken = null;
    this._refreshTimer = null;
    this._retryTimer = null;
  }

  /** Listen to "open", "reconnect", "disconnect", "close", "error" or "reload"; returns an unsubscribe. */
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this._listeners.get(name).delete(fn);
  }

  _emit(name, ...args) {
    for (const fn of this._listeners.get(name) || []) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`s3db "${name}" listener failed`, err);
      }
    }
  }

  get connected() {
    return this.state === "open";
  }

  async connect() {
    if (this.state === "open") return this;
    if (this.state === "closed") throw new S3dbError("CONNECTION_LOST", "the client is closed");
    this.state = "connecting";
    try {
      await this._open();
    } catch (err) {
      this.state = "idle";
      this._wakeReady();
      throw err;
    }
    this._setOpen();
    this._emit("open", this);
    return this;
  }

  /** Close the socket (1000); iterators end, pending requests reject with CONNECTION_LOST. */
  close() {
    if (this.state === "closed") return;
    this.state = "closed";
    clearTimeout(this._refreshTimer);
    clearTimeout(this._retryTimer);
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "client closed");
    this._failPending(new S3dbError("CONNECTION_LOST", "the client was closed"));
    for (const stream of this._streams.values()) for (const sub of stream.subs) sub._finish();
    this._streams.clear();
    for (const channel of this._channels.values()) channel._finish();
    this._channels.clear();
    this._wakeReady();
    this._emit("close", this);
  }

  // -- requests --------------------------------------------------------------------------------
  async ping() {
    return (await this.request({ type: "ping" })).timestamp;
  }

  /** Refresh the connection's token (same user); returns the user. */
  async auth(token) {
    const reply = await this.request({ type: "auth", token });
    this._currentToken = token;
    if (typeof this.token !== "function") this.token = token;
    this.user = reply.user ?? this.user;
    this._scheduleRefresh();
    return reply.user;
  }

  async get(resource, id) {
    return (await this.request({ type: "get", resource, id })).data;
  }

  async list(resource, { filter, limit, cursor, order } = {}) {
    const frame = { type: "list", resource };
    if (filter != null) frame.filter = filter;
    if (limit != null) frame.limit = limit;
    if (cursor != null) frame.cursor = cursor;
    if (order != null) frame.order = order;
    const reply = await this.request(frame);
    return { items: reply.data, cursor: reply.cursor ?? null };
  }

  async insert(resource, data) {
    return (await this.request({ type: "insert", resource, data })).data;
  }

  async update(resource, id, data) {
    return (await this.request({ type: "update", resource, id, data })).data;
  }

  async delete(resource, id) {
    const reply = await this.request({ type: "delete", resource, id });
    return reply.data ?? { id: reply.id ?? id };
  }

  /**
   * Subscribe to changes of `resource`: `{ filter, events }` are optional. With a `callback`
   * every event is handed to it; otherwise iterate the subscription with `for await`, which
   * keeps at most `maxPending` unread events (default: the client's option).
   * `since` (a saved `sub.position`) replays what happened after it first; `snapshot: true`
   * puts the first `limit` matching records in `sub.snapshot` (next page: `sub.cursor`) and
   * streams every later change, none missed or repeated. `onReload(sub)` is called when the
   * server cannot replay what the subscription missed (iterators also get `{event: "reload"}`).
   */
  async subscribe(resource, { filter, events, maxPending, since, snapshot, limit, onReload } = {}, callback = null) {
    const kinds = events ? EVENT_KINDS.filter((k) => events.includes(k)) : null;
    const pending = maxPending ?? this.maxPending;
    const sub = new Subscription(this, resource, filter ? { ...filter } : {}, kinds, callback, pending, onReload || null);
    const key = this._key(resource, sub.filter);
    let stream = this._streams.get(key);
    const extra = {};
    if (!stream) {
      stream = new Stream(resource, sub.filter);
      this._streams.set(key, stream);
      if (since != null) {
        const start = positionOf(since);
        if (!start) throw new S3dbError("INVALID_MESSAGE", "since must be {offset, epoch}");
        extra.since = start;
      }
    }
    if (snapshot) {
      extra.snapshot = true;
      if (limit != null) extra.limit = limit;
    }
    stream.subs.push(sub); // before the request: events may follow the reply at once
    sub._stream = stream;
    let reply;
    try {
      reply = await this.request({ ...stream.frame(false), ...extra }, { onReply: this._subscribed(stream) });
    } catch (err) {
      this._drop(key, stream, sub);
      sub.closed = true;
      throw err;
    }
    if (snapshot) {
      sub.snapshot = Array.isArray(reply.data) ? reply.data : [];
      sub.cursor = reply.cursor ?? null;
    }
    return sub;
  }

  /**
   * Join a channel: `{ info, self, maxPending }` are optional (`info`: this member's presence
   * data, an object of at most 1 KiB; `self`: receive this client's own messages too). With a
   * `callback` every message and presence event is handed to it; otherwise use `channel.on` or
   * `for await`. The client joins again after a reconnect.
   */
  async join(name, { info, self, maxPending } = {}, callback = null) {
    if (this._channels.has(name)) throw new S3dbError("INVALID_MESSAGE", `this client has already joined "${name}"`);
    const channel = new Channel(this, name, info, self, callback, maxPending ?? this.maxPending);
    this._channels.set(name, channel); // before the request: events may follow the reply at once
    try {
      await this.request(channel.frame(), { onReply: (reply) => channel._joined(reply, false) });
    } catch (err) {
      if (this._channels.get(name) === channel) this._channels.delete(name);
      channel.closed = true;
      throw err;
    }
    return channel;
  }

  /** Send any frame with a fresh requestId; resolves with its reply or rejects with S3dbError. */
  async request(frame, { onReply = null, waitReady = true } = {}) {
    const deadline = Date.now() + this.requestTimeout;
    if (waitReady && this.state !== "open") await this._waitReady(deadline);
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      throw this.failure || new S3dbError("CONNECTION_LOST", "not connected");
    }
    const requestId = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(requestId);
        reject(new S3dbError("TIMEOUT", `no reply to "${frame.type}" within ${this.requestTimeout} ms`, { requestId }));
      }, Math.max(0, deadline - Date.now()));
      this._pending.set(requestId, { resolve, reject, timer, onReply });
      ws.send(JSON.stringify({ ...frame, requestId }));
    });
  }

  // -- internals -------------------------------------------------------------------------------
  _key(resource, filter) {
    return `${resource}\u0000${stableJson(filter)}`;
  }

  _subscribed(stream) {
    return (reply) => {
      stream.effective = reply.filter || {};
      for (const sub of stream.subs) sub.effectiveFilter = { ...stream.effective };
      this._positioned(stream, reply);
    };
  }

  /** Take a `subscribed` reply's position (and `recovered`) for the stream. */
  _positioned(stream, reply) {
    const position = positionOf(reply.position);
    stream.live = true;
    if (typeof reply.recovered === "boolean") for (const sub of stream.subs) sub.recovered = reply.recovered;
    if (reply.recovered === false) {
      stream.position = position;
      stream.versions.clear();
      const event = {
        resource: stream.resource, event: "reload", data: {}, timestamp: Date.now(), version: 0,
        offset: position ? position.offset : null, epoch: position ? position.epoch : null,
      };
      for (const sub of [...stream.subs]) sub._reload(event);
      return;
    }
    const current = stream.position;
    if (position && (!current || current.epoch !== position.epoch || current.offset < position.offset)) {
      stream.position = position;
    }
  }

  _drop(key, stream, sub) {
    stream.subs = stream.subs.filter((s) => s !== sub);
    if (!stream.subs.length && this._streams.get(key) === stream) this._streams.delete(key);
  }

  async _release(sub) {
    const key = this._key(sub.resource, sub.filter);
    const stream = this._streams.get(key);
    if (!stream) return;
    this._drop(key, stream, sub);
    if (this._streams.has(key) || this.state !== "open") return;
    try {
      await this.request({ type: "unsubscribe", resource: sub.resource, filter: sub.filter });
    } catch {
      // the connection is going away; the server forgets its subscriptions with it
    }
  }

  async _leaveChannel(channel) {
    if (this._channels.get(channel.name) !== channel) return;
    this._channels.delete(channel.name);
    if (this.state !== "open") return;
    try {
      await this.request({ type: "leave", channel: channel.name });
    } catch {
      // the connection is going away; the server forgets its members with it
    }
  }

  _waitReady(deadline) {
    if (this.failure) return Promise.reject(this.failure);
    if (this.state === "closed" || this.state === "idle") {
      return Promise.reject(new S3dbError("CONNECTION_LOST", "not connected"));
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        done: () => {
          clearTimeout(timer);
          if (this.state === "open") resolve();
          else reject(this.failure || new S3dbError("CONNECTION_LOST", "the client was closed"));
        },
      };
      const timer = setTimeout(() => {
        this._readyWaiters = this._readyWaiters.filter((w) => w !== waiter);
        reject(new S3dbError("CONNECTION_LOST", `not reconnected within ${this.requestTimeout} ms`));
      }, Math.max(0, deadline - Date.now()));
      this._readyWaiters.push(waiter);
    });
  }

  _wakeReady() {
    for (const waiter of this._readyWaiters.splice(0)) waiter.done();
  }

  _setOpen() {
    this.state = "open";
    this._wakeReady();
  }

  _failPending(error) {
    const pending = [...this._pending.entries()];
    this._pending.clear();
    for (const [requestId, entry] of pending) {
      clearTimeout(entry.timer);
      entry.reject(new S3dbError(error.code, error.message, { ...error, requestId }));
    }
  }

  async _getToken() {
    const token = typeof this.token === "function" ? await this.token() : this.token;
    return token || null;
  }

  /** Open a socket, authenticate with an auth frame (or wait for `connected`). */
  async _open() {
    const token = await this._getToken();
    let url = this.url;
    if (this.apiKey) url += `${url.includes("?") ? "&" : "?"}apiKey=${encodeURIComponent(this.apiKey)}`;
    const ws = new WebSocket(url);
    const handshake = {};
    handshake.promise = new Promise((resolve, reject) => {
      handshake.resolve = resolve;
      handshake.reject = reject;
    });
    const timer = setTimeout(
      () => handshake.reject(new S3dbError("CONNECTION_LOST", `no answer from ${this.safeUrl} within ${this.requestTimeout} ms`)),
      this.requestTimeout,
    );
    let opened = false;
    let lastError = null;
    ws.onopen = () => {
      opened = true;
      if (!token) return;
      const requestId = this._nextId++;
      this._pending.set(requestId, {
        resolve: (reply) => handshake.resolve(reply.user ?? null),
        reject: handshake.reject,
        timer: null,
        onReply: null,
      });
      ws.send(JSON.stringify({ type: "auth", token, requestId }));
    };
    ws.onmessage = (e) => {
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      if (frame.type === "error" && frame.code === "UNAUTHORIZED") lastError = S3dbError.fromFrame(frame);
      if (frame.type === "connected") {
        this.clientId = frame.clientId ?? this.clientId;
        if (!token) handshake.resolve(frame.user ?? null);
      }
      // Sent at once by a server that needs credentials the upgrade did not carry.
      if (frame.type === "auth_required" && !token) {
        handshake.reject(new S3dbError("UNAUTHORIZED", "this server requires a token (or an API key) and none was given"));
        return;
      }
      this._onFrame(frame);
    };
    ws.onclose = (e) => {
      if (this._ws !== ws) {
        const error = e.code === UNAUTHORIZED_CLOSE
          ? lastError || new S3dbError("UNAUTHORIZED", e.reason || "unauthorized")
          : new S3dbError("CONNECTION_LOST", opened ? `closed during the handshake (${e.code})` : `cannot connect to ${this.safeUrl}`);
        this._failPending(error);
        handshake.reject(error);
        return;
      }
      this._onClose(ws, e.code, lastError);
    };
    try {
      this.user = await handshake.promise;
    } catch (err) {
      if (ws.readyState <= WebSocket.OPEN) ws.close(1000);
      throw err;
    } finally {
      clearTimeout(timer);
    }
    this._ws = ws;
    this._currentToken = token;
    this._scheduleRefresh();
  }

  /** The server revoked a subscription (details.revoked): its iterators reject with the error. */
  _revoked(error) {
    const details = error.details;
    if (!details || typeof details !== "object" || !details.revoked) return;
    const key = this._key(String(details.resource), details.filter || {});
    const stream = this._streams.get(key);
    if (!stream) return;
    this._streams.delete(key);
    for (const sub of stream.subs) sub._finish(error);
  }

  _onFrame(frame) {
    if (!frame || typeof frame !== "object") return;
    if (frame.type === "event") {
      if (typeof frame.channel === "string") this._channels.get(frame.channel)?._dispatch(frame);
      else this._dispatch(frame);
      return;
    }
    const entry = frame.requestId != null ? this._pending.get(frame.requestId) : undefined;
    if (entry) {
      this._pending.delete(frame.requestId);
      clearTimeout(entry.timer);
      if (frame.type === "error") {
        entry.reject(S3dbError.fromFrame(frame));
      } else {
        if (entry.onReply) entry.onReply(frame);
        entry.resolve(frame);
      }
    } else if (frame.type === "error") {
      const error = S3dbError.fromFrame(frame);
      this._emit("error", error);
      this._revoked(error);
    } else if (frame.type === "connected") {
      this.user = frame.user ?? this.user;
    }
  }

  /**
   * The server sends one frame per change even when several subscriptions match: match the record
   * against each stream's effective filter; an update that left every filter (or a filter on a
   * field the user may not see) goes to every subscription of the resource that wants its kind.
   */
  _dispatch(frame) {
    const event = {
      resource: frame.resource, event: frame.event, data: frame.data || {}, timestamp: frame.timestamp,
      version: Number.isInteger(frame.version) ? frame.version : 0,
      offset: Number.isInteger(frame.offset) ? frame.offset : null,
      epoch: typeof frame.epoch === "string" ? frame.epoch : null,
    };
    const wanted = [];
    for (const stream of this._streams.values()) {
      if (stream.resource !== event.resource) continue;
      if (!stream.live && stream.position) continue; // to be resubscribed: its replay brings this
      const fresh = stream.fresh(event); // resuming may repeat a change a stream already has
      if (!stream.advance(event)) {
        // a new epoch under a live stream: changes may have been lost
        const lost = { ...event, event: "reload", data: {}, version: 0 };
        for (const sub of [...stream.subs]) sub._reload(lost);
      }
      if (!fresh) continue;
      const subs = stream.subs.filter((s) => s.wants(event.event));
      if (subs.length) wanted.push([stream, subs]);
    }
    // A leave carries only the id: every subscription of the resource may have shown it.
    const matched = event.event === "leave" ? [] : wanted.filter(([stream]) => safeMatches(event.data, stream.effective));
    for (const [, subs] of matched.length ? matched : wanted) for (const sub of subs) sub._push(event);
  }

  _onClose(ws, code, lastError) {
    this._ws = null;
    for (const stream of this._streams.values()) stream.live = false; // resubscribed since their positions
    clearTimeout(this._refreshTimer);
    if (this.state === "closed") return;
    let final = null;
    if (code === UNAUTHORIZED_CLOSE && typeof this.token !== "function") {
      final = lastError || new S3dbError("UNAUTHORIZED", "unauthorized (close 4401)");
    } else if (!this.reconnect) {
      final = lastError || new S3dbError("CONNECTION_LOST", `connection lost (close ${code})`);
    }
    if (final) {
      this._fail(final);
      return;
    }
    this._failPending(new S3dbError("CONNECTION_LOST", `connection lost (close ${code})`));
    this.state = "reconnecting";
    this._emit("disconnect", code);
    this._scheduleReconnect(0);
  }

  _fail(error) {
    this.failure = error;
    this.state = "closed";
    this._failPending(error);
    for (const stream of this._streams.values()) for (const sub of stream.subs) sub._finish(error);
    this._streams.clear();
    for (const channel of this._channels.values()) channel._finish(error);
    this._channels.clear();
    this._wakeReady();
    this._emit("close", this, error);
  }

  _scheduleReconnect(attempt) {
    const { initial, maximum, factor, jitter } = this.backoff;
    const ceiling = Math.min(maximum, initial * factor ** Math.min(attempt, 64));
    const delay = ceiling * (1 - jitter * Math.random());
    this._retryTimer = setTimeout(() => this._attemptReconnect(attempt), delay);
  }

  async _attemptReconnect(attempt) {
    if (this.state !== "reconnecting") return;
    try {
      await this._open();
    } catch (err) {
      if (this.state !== "reconnecting") return;
      if (err.code === "UNAUTHORIZED" && typeof this.token !== "function") {
        this._fail(err);
        return;
      }
      this._scheduleReconnect(attempt + 1);
      return;
    }
    if (this.state !== "reconnecting") {
      this._ws?.close(1000);
      return;
    }
    this.reconnects += 1;
    await this._resubscribe();
    if (this._ws && this.state === "reconnecting") await this._rejoin();
    if (this._ws && this.state === "reconnecting") {
      this._setOpen();
      this._emit("reconnect", this);
    }
  }

  async _resubscribe() {
    for (const [key, stream] of [...this._streams.entries()]) {
      if (!stream.subs.length) continue;
      try {
        await this.request(stream.frame(), { waitReady: false, onReply: this._subscribed(stream) });
      } catch (err) {
        if (err.code === "CONNECTION_LOST" || err.code === "TIMEOUT") {
          this._ws?.close(4000, "resubscribe failed");
          return;
        }
        for (const sub of stream.subs) sub._finish(err);
        this._streams.delete(key);
      }
    }
  }

  async _rejoin() {
    for (const [name, channel] of [...this._channels.entries()]) {
      try {
        await this.request(channel.frame(), { waitReady: false, onReply: (reply) => channel._joined(reply, true) });
      } catch (err) {
        if (err.code === "CONNECTION_LOST" || err.code === "TIMEOUT") {
          this._ws?.close(4000, "rejoin failed");
          return;
        }
        if (this._channels.get(name) === channel) this._channels.delete(name);
        channel._finish(err); // no longer allowed in: its iterator rejects, "error" is emitted
      }
    }
  }

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    if (typeof this.token !== "function") return;
    const exp = jwtExpiry(this._currentToken);
    if (exp === null) return;
    const remaining = exp * 1000 - Date.now();
    const delay = Math.max(0, remaining - Math.min(this.refreshMargin, remaining * 0.2));
    this._refreshTimer = setTimeout(() => this._refresh(), delay);
  }

  async _refresh() {
    try {
      const token = await this._getToken();
      if (!token) return;
      const reply = await this.request({ type: "auth", token }, { waitReady: false });
      this._currentToken = token;
      this.user = reply.user ?? this.user;
      this._scheduleRefresh();
    } catch (err) {
      // the server closes at exp and the reconnect fetches a fresh token
      this._emit("error", err);
    }
  }
}

/** Create a client and connect it: `const db = await connect(url, { token })`. */
export async function connect(url, options = {}) {
  return new Client(url, options).connect();
}
