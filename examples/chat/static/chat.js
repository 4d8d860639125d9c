// The chat page: rooms, message history, live messages and typing indicators over /client.js.
import { connect } from "/client.js";

const TYPING_EVERY_MS = 2000; // re-announce "typing" at most this often (the server's TTL is 5 s)
const HISTORY = 50;

const $ = (selector) => document.querySelector(selector);
const state = {
  db: null,
  me: null,
  rooms: new Map(), // id -> room
  room: null, // the open room
  subs: [], // subscriptions of the open room
  messages: new Map(), // id -> message of the open room
  typing: new Map(), // userId -> indicator of the open room
  myTyping: null, // { id, at } of my latest indicator
};

// -- DEV ONLY sign-in: trade a name for a JWT (see examples/common.py dev_login_route) -------
async function devLogin(name) {
  const response = await fetch("/dev/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `sign-in failed (${response.status})`);
  return body;
}

function showError(error) {
  const status = $("#status");
  status.textContent = error ? `${error.code || "ERROR"}: ${error.message}` : "";
  status.hidden = !error;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// -- rooms ---------------------------------------------------------------------------------
function renderRooms() {
  const list = $("#rooms");
  const rooms = [...state.rooms.values()].sort((a, b) => a.name.localeCompare(b.name));
  list.replaceChildren(
    ...rooms.map((room) => {
      const button = el("button", { type: "button", textContent: `${room.isPrivate ? "🔒 " : "# "}${room.name}` });
      button.dataset.roomId = room.id;
      if (state.room && state.room.id === room.id) button.classList.add("current");
      button.addEventListener("click", () => openRoom(room.id).catch(showError));
      return el("li", {}, button);
    }),
  );
}

function upsertRoom(room) {
  state.rooms.set(room.id, room);
  if (state.room && state.room.id === room.id) {
    state.room = room;
    renderRoomHeader();
  }
  renderRooms();
}

async function loadRooms() {
  const { db, me } = state;
  // Public rooms, and the private rooms I am a member of (the guard only allows asking for those).
  const [open, mine] = await Promise.all([
    db.list("chat_rooms", { limit: 200 }),
    db.list("chat_rooms", { filter: { "members[]": me.id }, limit: 200 }),
  ]);
  for (const room of [...open.items, ...mine.items]) state.rooms.set(room.id, room);
  renderRooms();
}

// -- the open room ---------------------------------------------------------------------------
function renderRoomHeader() {
  $("#room-title").textContent = `${state.room.isPrivate ? "🔒 " : "# "}${state.room.name}`;
  $("#room-description-text").textContent = state.room.description || "";
}

function renderMessages() {
  const list = $("#messages");
  const messages = [...state.messages.values()].sort((a, b) => (a.id < b.id ? -1 : 1)); // ids are time-ordered
  list.replaceChildren(
    ...messages.map((m) => {
      const time = new Date(m.createdAt).toLocaleTimeString();
      const item = el("li", { className: "message" },
        el("span", { className: "author", textContent: m.username }),
        el("span", { className: "content", textContent: m.content }),
        el("span", { className: "time", textContent: time }));
      item.dataset.userId = m.userId;
      return item;
    }),
  );
  list.scrollTop = list.scrollHeight;
}

function renderTyping() {
  const names = [...state.typing.values()].map((t) => t.username);
  const text = names.length === 0 ? ""
    : names.length === 1 ? `${names[0]} is typing…`
      : `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
  $("#typing").textContent = text;
}

function onMessage(event) {
  const message = event.data;
  state.messages.set(message.id, message);
  state.typing.delete(message.userId); // they sent it: they are no longer typing
  renderMessages();
  renderTyping();
}

function onTyping(event) {
  const indicator = event.data;
  if (event.event === "insert") {
    if (indicator.userId !== state.me.id) state.typing.set(indicator.userId, indicator);
  } else if (event.event === "delete") {
    const shown = state.typing.get(indicator.userId);
    if (shown && shown.id === indicator.id) state.typing.delete(indicator.userId);
  }
  renderTyping();
}

async function closeRoom() {
  const subs = state.subs;
  state.subs = [];
  await Promise.all(subs.map((sub) => sub.unsubscribe()));
}

async function openRoom(roomId) {
  const { db } = state;
  await closeRoom();
  state.room = state.rooms.get(roomId) || (await db.get("chat_rooms", roomId));
  state.messages = new Map();
  state.typing = new Map();
  state.myTyping = null;
  location.hash = `room=${encodeURIComponent(roomId)}`;
  renderRoomHeader();
  renderRooms();
  renderTyping();
  $("#room").hidden = false;
  $("#no-room").hidden = true;
  // Subscribe first, then load the history: nothing falls between the two (ids dedupe).
  state.subs = await Promise.all([
    db.subscribe("chat_messages", { filter: { roomId } }, onMessage),
    db.subscribe("typing_indicators", { filter: { roomId } }, onTyping),
  ]);
  await loadHistory();
  $("#message").focus();
}

async function loadHistory() {
  const roomId = state.room.id;
  const newest = await state.db.list("chat_messages", { filter: { roomId }, limit: HISTORY, order: "desc" });
  for (const message of newest.items) state.messages.set(message.id, message);
  renderMessages();
}

// -- composing -------------------------------------------------------------------------------
async function announceTyping() {
  const now = Date.now();
  if (!state.room || (state.myTyping && now - state.myTyping.at < TYPING_EVERY_MS)) return;
  state.myTyping = { id: null, at: now };
  const indicator = await state.db.insert("typing_indicators", { roomId: state.room.id });
  if (state.myTyping && state.myTyping.at === now) state.myTyping.id = indicator.id;
}

async function stopTyping() {
  const mine = state.myTyping;
  state.myTyping = null;
  if (!mine || !mine.id) return;
  try {
    await state.db.delete("typing_indicators", mine.id);
  } catch (error) {
    if (error.code !== "NOT_FOUND") throw error; // the cleanup got there first
  }
}

async function sendMessage() {
  const input = $("#message");
  const content = input.value.trim();
  if (!content || !state.room) return;
  await state.db.insert("chat_messages", { roomId: state.room.id, content });
  input.value = "";
  await stopTyping();
}

async function createRoom() {
  const name = $("#room-name").value.trim();
  const description = $("#room-description").value.trim();
  const isPrivate = $("#room-private").checked;
  const members = $("#room-members").value.split(",").map((m) => m.trim()).filter(Boolean);
  const data = { name, isPrivate };
  if (description) data.description = description;
  if (members.length) data.members = members;
  const room = await state.db.insert("chat_rooms", data);
  $("#new-room").reset();
  upsertRoom(room);
  await openRoom(room.id);
}

// -- start -----------------------------------------------------------------------------------
async function start(name) {
  const first = await devLogin(name);
  let token = first.token;
  state.me = first.user;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  // The token function is called again on every reconnect: a fresh dev token each time.
  state.db = await connect(url, {
    token: async () => {
      const current = token;
      token = null;
      return current || (await devLogin(name)).token;
    },
  });
  sessionStorage.setItem("chat-name", name);
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#whoami").textContent = `signed in as ${state.me.name} (dev token)`;
  const connection = $("#connection");
  const setConnection = (text, open) => {
    connection.textContent = text;
    connection.classList.toggle("open", open);
  };
  setConnection("connected", true);
  state.db.on("disconnect", () => setConnection("reconnecting…", false));
  state.db.on("reconnect", () => {
    setConnection("connected", true);
    state.typing.clear(); // deletes may have been missed while away
    renderTyping();
    loadRooms().catch(showError);
    if (state.room) loadHistory().catch(showError);
  });
  state.db.on("close", (_client, error) => setConnection(error ? `closed: ${error.message}` : "closed", false));

  await Promise.all([
    state.db.subscribe("chat_rooms", {}, (e) => upsertRoom(e.data)),
    state.db.subscribe("chat_rooms", { filter: { "members[]": state.me.id } }, (e) => upsertRoom(e.data)),
  ]);
  await loadRooms();
  window.addEventListener("hashchange", () => openHashRoom().catch(showError));
  await openHashRoom();
}

async function openHashRoom() {
  const wanted = new URLSearchParams(location.hash.slice(1)).get("room");
  if (wanted && wanted !== state.room?.id) await openRoom(wanted);
}

function signIn(name) {
  const error = $("#login-error");
  error.hidden = true;
  start(name).catch((err) => {
    if (!$("#app").hidden) return showError(err); // signed in; something later failed
    error.textContent = err.message;
    error.hidden = false;
  });
}

function wire() {
  const guard = (fn) => (event) => {
    event.preventDefault();
    showError(null);
    fn().catch(showError);
  };
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("#login-name").value.trim());
  });
  $("#new-room").addEventListener("submit", guard(createRoom));
  $("#composer").addEventListener("submit", guard(sendMessage));
  $("#message").addEventListener("input", () => announceTyping().catch(showError));
  const remembered = sessionStorage.getItem("chat-name");
  if (remembered) {
    $("#login-name").value = remembered;
    signIn(remembered);
  }
}

wire();
