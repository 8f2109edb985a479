// The demo's page script: one websocket per page, live counts, members and chat.
// The socket is channels_presence's browser client (presence.js), which
// reconnects after network trouble and stays closed when presence says why.
import { PresenceSocket, readCloseCodes } from "channels_presence";

// The demo's own close codes; presence's (signed in elsewhere, signed out,
// refused) come from the page, rendered by {% presence_close_codes %}.
const NOT_SIGNED_IN = 4401;
const NO_SUCH_ROOM = 4404;

const statusEl = document.getElementById("status");

function setStatus(state, text) {
  if (!statusEl) return;
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

function showBanner(title, text, actionText, actionHref) {
  const banner = document.getElementById("banner");
  document.getElementById("banner-title").textContent = title;
  document.getElementById("banner-text").textContent = text;
  const action = document.getElementById("banner-action");
  action.textContent = actionText;
  action.href = actionHref;
  banner.hidden = false;
  document.body.classList.add("is-closed");
}

// Why a socket was closed for good: a presence reason ("superseded",
// "logged_out", "rejected", "kicked") or one of the demo's codes.
function explain(reason) {
  const signIn = "/accounts/login/?next=" + encodeURIComponent(location.pathname);
  if (reason === "superseded") {
    showBanner(
      "You signed in elsewhere.",
      "This account is now connected from another browser or device, so this tab was disconnected and will not reconnect.",
      "Use this tab instead",
      location.href,
    );
  } else if (reason === "rejected") {
    showBanner(
      "You are already signed in elsewhere.",
      "This account is connected from another browser or device, and only one may be connected at a time.",
      "Try again",
      location.href,
    );
  } else if (reason === "kicked") {
    showBanner("You were disconnected.", "An administrator closed this account's connections.", "Reconnect", location.href);
  } else if (reason === "logged_out" || reason === "not_signed_in") {
    showBanner("You are signed out.", "This tab was disconnected. Sign in again to rejoin.", "Sign in", signIn);
  } else if (reason === "no_room") {
    showBanner("This room does not exist.", "", "Back to the lobby", "/");
  } else {
    showBanner("You are disconnected.", "The connection could not be restored.", "Reload", location.href);
  }
}

// A PresenceSocket wired to the page's status line and banner.
function connect(path, options, onMessage) {
  const socket = new PresenceSocket(path, {
    closeCodes: readCloseCodes(),
    stopCodes: { [NOT_SIGNED_IN]: "not_signed_in", [NO_SUCH_ROOM]: "no_room" },
    ...options,
  });
  socket.addEventListener("open", () => setStatus("live", "live"));
  socket.addEventListener("reconnecting", () => setStatus("reconnecting", "reconnecting…"));
  socket.addEventListener("closed", (event) => {
    setStatus("closed", "disconnected");
    explain(event.detail.reason);
  });
  socket.addEventListener("message", (event) => onMessage(event.detail.data));
  return socket;
}

// A steady colour per name, so people are easy to tell apart.
function colourFor(name) {
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.codePointAt(0)) % 360;
  return "hsl(" + hash + " 55% 48%)";
}

function plural(n, one, many) {
  return n === 1 ? one : many;
}

function setCount(el, n, one, many) {
  el.textContent = String(n);
  const label = el.nextElementSibling;
  if (label) label.textContent = plural(n, one, many);
}

// Lobby -------------------------------------------------------------------

function renderRoomCard(state) {
  const card = document.querySelector('.room-card[data-room="' + state.room + '"]');
  if (!card) return;
  setCount(card.querySelector('[data-field="people"]'), state.people, "person", "people");
  setCount(card.querySelector('[data-field="connections"]'), state.connections, "connection", "connections");
  card.querySelector('[data-field="members"]').textContent =
    state.members.length ? state.members.join(", ") : "Nobody here yet";
  card.classList.toggle("is-busy", state.people > 0);
}

function startLobby() {
  document.querySelectorAll(".room-card").forEach((card) => {
    card.classList.toggle("is-busy", card.querySelector('[data-field="people"]').textContent !== "0");
  });
  connect("/ws/lobby/", {}, (message) => {
    if (message.type === "lobby.state") message.rooms.forEach(renderRoomCard);
    if (message.type === "room.state") renderRoomCard(message);
  });
}

// Room --------------------------------------------------------------------

function startRoom(slug, group) {
  const me = document.getElementById("me").textContent;
  const messages = document.getElementById("messages");
  const empty = document.getElementById("messages-empty");
  const memberList = document.getElementById("member-list");
  const composer = document.getElementById("composer");
  const input = document.getElementById("message-input");
  // Usernames by pk, from the messages that name users.
  const names = new Map();

  function addMessage(message) {
    empty.hidden = true;
    const item = document.createElement("li");
    item.className = "message" + (message.user === me ? " mine" : "");
    const head = document.createElement("div");
    head.className = "message-head";
    const who = document.createElement("span");
    who.className = "message-user";
    who.textContent = message.user;
    const when = document.createElement("time");
    when.dateTime = message.at;
    when.textContent = new Date(message.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    head.append(who, when);
    const body = document.createElement("p");
    body.textContent = message.text;
    item.append(head, body);
    messages.append(item);
    messages.scrollTop = messages.scrollHeight;
  }

  // The member list and the people count follow the socket's MemberList.
  function renderMembers(pks) {
    const people = pks.map((pk) => names.get(String(pk)) || "user " + pk).sort();
    setCount(document.getElementById("people-count"), people.length, "person", "people");
    memberList.replaceChildren(...people.map((name) => {
      const item = document.createElement("li");
      const avatar = document.createElement("span");
      avatar.className = "avatar";
      avatar.textContent = name.charAt(0).toUpperCase();
      avatar.style.background = colourFor(name);
      const label = document.createElement("span");
      label.textContent = name + (name === me ? " (you)" : "");
      item.append(avatar, label);
      item.dataset.user = name;
      return item;
    }));
  }

  const socket = connect("/ws/rooms/" + slug + "/", { group }, (message) => {
    if (message.type === "room.state") {
      setCount(document.getElementById("connection-count"), message.connections, "connection", "connections");
    }
    if (message.type === "chat.history") {
      messages.querySelectorAll(".message").forEach((el) => el.remove());
      message.messages.forEach(addMessage);
    }
    if (message.type === "chat.message") addMessage(message);
  });
  socket.addEventListener("members", (event) => {
    for (const [pk, name] of Object.entries(event.detail.message.names || {})) names.set(pk, name);
    renderMembers(event.detail.members);
  });

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (text && socket.send({ type: "chat.message", text })) input.value = "";
  });
}

const page = document.body.dataset.page;
if (page === "lobby") startLobby();
if (page === "room") startRoom(document.body.dataset.room, document.body.dataset.group);
