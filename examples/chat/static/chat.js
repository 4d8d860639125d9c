// The chat page: rooms, message history, live messages and typing indicators over /client.js.
import { $, avatar, clock, el, handle, showError, signInWith } from "/shared/app.js";

const TYPING_EVERY_MS = 2000; // re-announce "typing" at most this often (the server's TTL is 5 s)
const HISTORY = 50;

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
      const item = el("li", { className: `message${m.userId === state.me.id ? " mine" : ""}` },
        avatar(m.username),
        el("div", { className: "bubble" },
          el("span", { className: "author", textContent: m.username }),
          el("span", { className: "content", textContent: m.content }),
          el("span", { className: "time", textContent: clock(m.createdAt) })));
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
  document.body.classList.add("in-room"); // on a phone: the conversation takes the screen
  // Subscribe first, then load the history: nothing falls between the two (ids dedupe).
  state.subs = await Promise.all([
    db.subscribe("chat_messages", { filter: { roomId } }, onMessage),
    db.subscribe("typing_indicators", { filter: { roomId } }, onTyping),
  ]);
  await loadHistory();
  $("#message").focus();
}

/** Back to the room list (the phone's "Rooms" button, or the browser's back button). */
async function leaveRoom() {
  await closeRoom();
  Object.assign(state, { room: null, messages: new Map(), typing: new Map(), myTyping: null });
  $("#room").hidden = true;
  $("#no-room").hidden = false;
  document.body.classList.remove("in-room");
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  renderRooms();
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

async function stopTyping(mine = state.myTyping) {
  if (state.myTyping === mine) state.myTyping = null;
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
  // Clear the box now, not when the server answers: what is typed meanwhile is the next message.
  input.value = "";
  const typing = state.myTyping;
  state.myTyping = null;
  try {
    await state.db.insert("chat_messages", { roomId: state.room.id, content });
  } catch (error) {
    if (!input.value) input.value = content; // give the unsent text back
    throw error;
  }
  await stopTyping(typing);
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
async function ready(db, me) {
  state.db = db;
  state.me = me;
  await Promise.all([
    db.subscribe("chat_rooms", {}, (e) => upsertRoom(e.data)),
    db.subscribe("chat_rooms", { filter: { "members[]": me.id } }, (e) => upsertRoom(e.data)),
  ]);
  await loadRooms();
  window.addEventListener("hashchange", () => openHashRoom().catch(showError));
  await openHashRoom();
}

function onReconnect() {
  state.typing.clear(); // deletes may have been missed while away
  renderTyping();
  loadRooms().catch(showError);
  if (state.room) loadHistory().catch(showError);
}

async function openHashRoom() {
  const wanted = new URLSearchParams(location.hash.slice(1)).get("room");
  if (wanted && wanted !== state.room?.id) await openRoom(wanted);
  else if (!wanted && state.room) await leaveRoom();
}

$("#back-to-rooms").addEventListener("click", handle(leaveRoom));
$("#new-room").addEventListener("submit", handle(createRoom));
$("#composer").addEventListener("submit", handle(sendMessage));
$("#message").addEventListener("input", () => announceTyping().catch(showError));
signInWith({ key: "chat-login", ready, onReconnect, describe: (me) => `${me.name} (dev token)` });
