// The demo's only script: one websocket per page, live counts and chat.
"use strict";

(function () {
  // channels_presence closes a superseded connection with this code (its CLOSE_CODE).
  const SIGNED_IN_ELSEWHERE = 4001;
  const SIGNED_OUT = 4002;
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

  // Why a socket was closed for good, from the server's last message or the close code.
  const CLOSED_BY_CODE = {};
  CLOSED_BY_CODE[SIGNED_IN_ELSEWHERE] = "superseded";
  CLOSED_BY_CODE[SIGNED_OUT] = "logged_out";
  CLOSED_BY_CODE[NOT_SIGNED_IN] = "signed-out";
  CLOSED_BY_CODE[NO_SUCH_ROOM] = "no-room";

  function explain(reason) {
    const signIn = "/accounts/login/?next=" + encodeURIComponent(location.pathname);
    if (reason === "superseded") {
      showBanner(
        "You signed in elsewhere.",
        "This account is now connected from another browser or device, so this tab was disconnected and will not reconnect.",
        "Use this tab instead",
        location.href,
      );
    } else if (reason === "kicked" || reason === "logged_out" || reason === "signed-out") {
      showBanner("You are signed out.", "This tab was disconnected. Sign in again to rejoin.", "Sign in", signIn);
    } else {
      showBanner("This room does not exist.", "", "Back to the lobby", "/");
    }
  }

  // Opens a websocket and reopens it after network trouble, with backoff.
  // It stays closed for good when the server says why it closed it (signed in
  // elsewhere, signed out, no such room): reconnecting would only fight the server.
  function connect(path, onMessage) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let socket = null;
    let retries = 0;
    let closingReason = null;

    function open() {
      socket = new WebSocket(scheme + "://" + location.host + path);
      socket.addEventListener("open", function () {
        retries = 0;
        setStatus("live", "live");
      });
      socket.addEventListener("message", function (event) {
        const message = JSON.parse(event.data);
        if (message.type === "session.closing") {
          closingReason = message.reason;  // the close that follows explains itself
          return;
        }
        onMessage(message);
      });
      socket.addEventListener("close", function (event) {
        const reason = closingReason || CLOSED_BY_CODE[event.code];
        closingReason = null;
        // "expired": the server lost track of us (missed heartbeats); just come back.
        if (reason && reason !== "expired") {
          setStatus("closed", "disconnected");
          explain(reason);
          return;
        }
        const delay = Math.min(1000 * 2 ** retries, 15000);
        retries += 1;
        setStatus("reconnecting", "reconnecting…");
        setTimeout(open, delay);
      });
    }

    open();
    return {
      send: function (data) {
        if (socket && socket.readyState === WebSocket.OPEN) {
          socket.send(JSON.stringify(data));
          return true;
        }
        return false;
      },
    };
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
    document.querySelectorAll(".room-card").forEach(function (card) {
      card.classList.toggle("is-busy", card.querySelector('[data-field="people"]').textContent !== "0");
    });
    connect("/ws/lobby/", function (message) {
      if (message.type === "lobby.state") message.rooms.forEach(renderRoomCard);
      if (message.type === "room.state") renderRoomCard(message);
    });
  }

  // Room --------------------------------------------------------------------

  function startRoom(slug) {
    const me = document.getElementById("me").textContent;
    const messages = document.getElementById("messages");
    const empty = document.getElementById("messages-empty");
    const members = document.getElementById("member-list");
    const composer = document.getElementById("composer");
    const input = document.getElementById("message-input");

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

    function renderMembers(state) {
      setCount(document.getElementById("people-count"), state.people, "person", "people");
      setCount(document.getElementById("connection-count"), state.connections, "connection", "connections");
      members.replaceChildren(...state.members.map(function (name) {
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

    const socket = connect("/ws/rooms/" + slug + "/", function (message) {
      if (message.type === "room.state") renderMembers(message);
      if (message.type === "chat.history") {
        messages.querySelectorAll(".message").forEach(function (el) { el.remove(); });
        message.messages.forEach(addMessage);
      }
      if (message.type === "chat.message") addMessage(message);
    });

    composer.addEventListener("submit", function (event) {
      event.preventDefault();
      const text = input.value.trim();
      if (text && socket.send({ type: "chat.message", text: text })) input.value = "";
    });
  }

  const page = document.body.dataset.page;
  if (page === "lobby") startLobby();
  if (page === "room") startRoom(document.body.dataset.room);
})();
