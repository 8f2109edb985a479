// channels-presence in the browser: a websocket that comes back after network
// trouble, stays closed when the server says why it closed it, and keeps the
// member list of a group from presence diffs.
//
// An ES module without dependencies or a build step, served by Django's
// staticfiles:
//
//   <script type="module">
//     import { PresenceSocket } from "{% static 'channels_presence/presence.js' %}";
//     const socket = new PresenceSocket("/ws/room/", { group: "room-1" });
//     socket.addEventListener("closed", (e) => showBanner(e.detail.reason));
//   </script>
//
// The README's "In the browser" section lists every option and event.

/** Close codes that mean "do not reconnect", by the reason they stand for.
 * They are channels-presence's defaults for the CLOSE_CODE, LOGOUT_CODE and
 * REJECT_CODE settings; pass your own with the `closeCodes` option. */
export const CLOSE_CODES = Object.freeze({ superseded: 4001, logged_out: 4002, rejected: 4003 });

/** The `type` of the JSON messages the socket acts on (see the README). */
export const MESSAGE_TYPES = Object.freeze({
  diff: "presence.diff",
  members: "presence.members",
  closing: "presence.closing",
});

/** Reconnection delays: `minDelay * factor ** attempt`, at most `maxDelay`,
 * minus up to `jitter` of it at random, so that clients dropped together do
 * not all come back in the same instant. */
export const BACKOFF = Object.freeze({ minDelay: 1000, maxDelay: 30000, factor: 2, jitter: 0.5 });

/** The id of the element `{% presence_close_codes %}` renders. */
export const CLOSE_CODES_ELEMENT_ID = "presence-close-codes";

/**
 * Milliseconds to wait before reconnection attempt `attempt` (0 for the first).
 * @param {number} attempt
 * @param {Partial<typeof BACKOFF>} [options]
 * @param {() => number} [random] a number in [0, 1)
 * @returns {number}
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const { minDelay, maxDelay, factor, jitter } = { ...BACKOFF, ...options };
  const ceiling = Math.min(maxDelay, minDelay * factor ** Math.max(0, attempt));
  return Math.round(ceiling * (1 - Math.min(1, Math.max(0, jitter)) * random()));
}

/**
 * The close codes a page was rendered with by `{% presence_close_codes %}`
 * (from the server's settings), or the defaults where the tag is absent.
 * @param {string} [elementId]
 * @returns {{superseded: number, logged_out: number, rejected: number}}
 */
export function readCloseCodes(elementId = CLOSE_CODES_ELEMENT_ID) {
  const element = typeof document === "undefined" ? null : document.getElementById(elementId);
  return element ? { ...CLOSE_CODES, ...JSON.parse(element.textContent) } : { ...CLOSE_CODES };
}

// Primary keys arrive as JSON numbers or strings; one user is one key either way.
const keyOf = (pk) => String(pk);

/** The users present in one group, kept from a snapshot and the diffs that follow. */
export class MemberList {
  #group;
  #members = new Map();

  /**
   * @param {string | null} [group] only messages about this group apply; `null`: any
   * @param {Iterable<unknown>} [members] the users present to begin with
   */
  constructor(group = null, members = []) {
    this.#group = group;
    for (const pk of members) this.#members.set(keyOf(pk), pk);
  }

  /** The group this list follows, or `null`. */
  get group() {
    return this.#group;
  }

  /** How many users are present. */
  get size() {
    return this.#members.size;
  }

  /** Whether the user with this primary key is present. */
  has(pk) {
    return this.#members.has(keyOf(pk));
  }

  /** The primary keys present, in the order they arrived. */
  toArray() {
    return [...this.#members.values()];
  }

  [Symbol.iterator]() {
    return this.#members.values();
  }

  /** Whether a message about `group` concerns this list. */
  follows(group) {
    return this.#group === null || group === this.#group;
  }

  /**
   * Replace the whole list (a snapshot). Returns who joined and left by it.
   * @param {Iterable<unknown>} members
   */
  reset(members) {
    const next = new Map();
    for (const pk of members) next.set(keyOf(pk), pk);
    const joins = [...next].filter(([key]) => !this.#members.has(key)).map(([, pk]) => pk);
    const leaves = [...this.#members].filter(([key]) => !next.has(key)).map(([, pk]) => pk);
    this.#members = next;
    return { joins, leaves };
  }

  /**
   * Apply a presence diff, `{group, joins: [pks], leaves: [pks]}`. Returns the
   * joins and leaves that changed the list (a join of someone already present
   * changes nothing). A diff about another group is ignored.
   */
  apply(diff) {
    const joins = [];
    const leaves = [];
    if (!diff || !this.follows(diff.group)) return { joins, leaves };
    for (const pk of diff.leaves || []) {
      if (this.#members.delete(keyOf(pk))) leaves.push(pk);
    }
    for (const pk of diff.joins || []) {
      if (!this.#members.has(keyOf(pk))) {
        this.#members.set(keyOf(pk), pk);
        joins.push(pk);
      }
    }
    return { joins, leaves };
  }
}

/**
 * A websocket to a channels-presence consumer that reconnects with backoff.
 *
 * Events (each a CustomEvent; the fields are on `event.detail`):
 * - `open` `{attempt}`: connected; `attempt` is 0 on the first connection.
 * - `message` `{data}`: every message, parsed as JSON (or the raw data if it is not JSON).
 * - `members` `{members, joins, leaves, group, message}`: the member list changed.
 * - `reconnecting` `{attempt, delay, code, reason}`: the socket dropped; it tries again in `delay` ms.
 * - `closed` `{code, reason}`: closed for good (a terminal code, `close()`, or `maxRetries` used up).
 */
export class PresenceSocket extends EventTarget {
  #url;
  #options;
  #socket = null;
  #attempt = 0;
  #openedAt = 0;
  #timer = null;
  #closingReason = null;
  #state = "connecting";

  /**
   * @param {string} url a `ws(s)://` URL, or a path on this page's host (`/ws/room/`)
   * @param {object} [options]
   * @param {Partial<typeof CLOSE_CODES>} [options.closeCodes] the server's CLOSE_CODE, LOGOUT_CODE, REJECT_CODE
   * @param {Record<number, string>} [options.stopCodes] more codes that end for good, with their reason
   * @param {string | null} [options.group] the group whose members to keep; `null`: every diff
   * @param {number} [options.minDelay] see BACKOFF
   * @param {number} [options.maxDelay]
   * @param {number} [options.factor]
   * @param {number} [options.jitter] 0 to 1
   * @param {number} [options.resetAfter] ms a connection must last for the delays to start over
   * @param {number} [options.maxRetries] reconnection attempts in a row before giving up
   * @param {string | string[]} [options.protocols] websocket subprotocols
   * @param {Partial<typeof MESSAGE_TYPES>} [options.messageTypes]
   * @param {boolean} [options.connect] `false`: wait for `connect()`
   */
  constructor(url, options = {}) {
    super();
    this.#url = url;
    this.#options = {
      ...BACKOFF,
      resetAfter: 5000,
      maxRetries: Infinity,
      protocols: undefined,
      group: null,
      stopCodes: {},
      connect: true,
      ...options,
      closeCodes: { ...CLOSE_CODES, ...options.closeCodes },
      messageTypes: { ...MESSAGE_TYPES, ...options.messageTypes },
    };
    /** The members of `options.group`, kept from snapshots and diffs. */
    this.members = new MemberList(this.#options.group);
    if (this.#options.connect) this.connect();
  }

  /** `"connecting"`, `"open"`, `"reconnecting"` or `"closed"`. */
  get state() {
    return this.#state;
  }

  /** The absolute websocket URL. */
  get url() {
    if (/^wss?:\/\//.test(this.#url)) return this.#url;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return new URL(this.#url, scheme + "//" + location.host).href;
  }

  /** The reason a close code stands for, if it means "do not reconnect". */
  stopReason(code) {
    for (const [reason, value] of Object.entries(this.#options.closeCodes)) {
      if (value === code) return reason;
    }
    return this.#options.stopCodes[code] ?? null;
  }

  /** Open the socket now (when created with `connect: false`, or to retry at once). */
  connect() {
    clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#socket) return;
    this.#state = this.#attempt === 0 ? "connecting" : "reconnecting";
    const socket = new WebSocket(this.url, this.#options.protocols);
    this.#socket = socket;
    socket.addEventListener("open", () => {
      this.#openedAt = Date.now();
      this.#state = "open";
      this.#emit("open", { attempt: this.#attempt });
    });
    socket.addEventListener("message", (event) => this.#received(event.data));
    socket.addEventListener("close", (event) => this.#closed(socket, event.code));
  }

  /** Send `data` as JSON (strings and binary as they are). False when not connected. */
  send(data) {
    if (!this.#socket || this.#socket.readyState !== WebSocket.OPEN) return false;
    const isRaw =
      typeof data === "string" || data instanceof Blob || data instanceof ArrayBuffer || ArrayBuffer.isView(data);
    this.#socket.send(isRaw ? data : JSON.stringify(data));
    return true;
  }

  /** Close for good: no reconnection. */
  close(code = 1000, reason = "") {
    clearTimeout(this.#timer);
    this.#timer = null;
    const socket = this.#socket;
    this.#socket = null;
    if (this.#state === "closed") return;
    this.#state = "closed";
    if (socket) socket.close(code, reason);
    this.#emit("closed", { code, reason: "client" });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #received(raw) {
    let message = raw;
    try {
      message = JSON.parse(raw);
    } catch {
      // Not JSON: passed on as it came.
    }
    const types = this.#options.messageTypes;
    const kind = message && typeof message === "object" ? message.type : undefined;
    if (kind === types.closing && typeof message.reason === "string") {
      // The close that follows explains itself with this reason.
      this.#closingReason = message.reason;
    } else if (kind === types.members && this.members.follows(message.group)) {
      this.#membersChanged(this.members.reset(message.members || []), message);
    } else if (kind === types.diff) {
      const change = this.members.apply(message);
      if (change.joins.length || change.leaves.length) this.#membersChanged(change, message);
    }
    this.#emit("message", { data: message });
  }

  #membersChanged(change, message) {
    this.#emit("members", {
      members: this.members.toArray(),
      joins: change.joins,
      leaves: change.leaves,
      group: message.group ?? null,
      message,
    });
  }

  #closed(socket, code) {
    if (socket !== this.#socket) return; // closed by close(), already reported
    this.#socket = null;
    const announced = this.#closingReason;
    this.#closingReason = null;
    const stop = this.stopReason(code);
    if (stop !== null) {
      this.#state = "closed";
      this.#emit("closed", { code, reason: announced ?? stop });
      return;
    }
    if (this.#openedAt && Date.now() - this.#openedAt >= this.#options.resetAfter) {
      this.#attempt = 0;
    }
    this.#openedAt = 0;
    if (this.#attempt >= this.#options.maxRetries) {
      this.#state = "closed";
      this.#emit("closed", { code, reason: "gave_up" });
      return;
    }
    const delay = backoffDelay(this.#attempt, this.#options);
    this.#attempt += 1;
    this.#state = "reconnecting";
    this.#emit("reconnecting", { attempt: this.#attempt, delay, code, reason: announced });
    this.#timer = setTimeout(() => this.connect(), delay);
  }
}
