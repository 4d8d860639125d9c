// The chat page: rooms, message history, live messages over /client.js; who is in the room and
// who is typing through the room's channel (chat:<roomId>: presence and a "typing" event, never
// stored).
import { $, avatar, clock, el, handle, showError, signInWith } from "/shared/app.js";

const TYPING_EVERY_MS = 2000; // re-announce "typing" at most this often while keys are pressed
const TYPING_SHOWN_MS = 5000; // "x is typing…" goes away this long after their last announcement
const HISTORY = 50;

const state = {
  db: null,
  me: null,
  rooms: new Map(), // id -> room
  room: null, // the open room
  subs: [], // subscriptions of the open room
  channel: null, // the open room's channel: its members are who is in the room
  messages: new Map(), // id -> message of the open room
  typing: new Map(), // userId -> timer that hides "typing" (from the room's channel)
  myTyping: null, // { at } of my latest "typing" announcement
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
  const names = [...state.typing.keys()];
  const text = names.length === 0 ? ""
    : names.length === 1 ? `${names[0]} is typing…`
      : `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
  $("#typing").textContent = text;
}

/** Who is in the room: the channel's members, one entry per user (a user may have several tabs). */
function renderPresence() {
  const members = state.channel ? [...state.channel.members.values()] : [];
  const users = [...new Set(members.map((m) => m.userId).filter((id) => typeof id === "string"))].sort();
  $("#present").replaceChildren(
    ...users.map((id) => {
      const item = el("li", { className: id === state.me.id ? "me" : "", textContent: id });
      item.dataset.userId = id;
      return item;
    }),
  );
}

function stopShowingTyping(userId) {
  clearTimeout(state.typing.get(userId));
  state.typing.delete(userId);
}

function clearTyping() {
  for (const timer of state.typing.values()) clearTimeout(timer);
  state.typing.clear();
}

function onMessage(event) {
  const message = event.data;
  state.messages.set(message.id, message);
  stopShowingTyping(message.userId); // they sent it: they are no longer typing
  renderMessages();
  renderTyping();
}

/** The room's channel: presence changes and "typing" ({on}) from the others. */
function onChannel(message) {
  if (message.event === "typing") {
    const userId = message.from && message.from.userId; // from the sender's token, never its data
    if (typeof userId !== "string" || userId === state.me.id) return;
    stopShowingTyping(userId);
    if (message.data && message.data.on) {
      state.typing.set(userId, setTimeout(() => {
        state.typing.delete(userId);
        renderTyping();
      }, TYPING_SHOWN_MS));
    }
    renderTyping();
    return;
  }
  if (message.event === "member_removed" && message.data) {
    const gone = message.data.userId;
    if (state.channel && ![...state.channel.members.values()].some((m) => m.userId === gone)) stopShowingTyping(gone);
    renderTyping();
  }
  renderPresence();
}

async function joinChannel(roomId) {
  let channel;
  try {
    channel = await state.db.join(`chat:${roomId}`, {}, onChannel);
  } catch (error) {
    showError(error); // the room works without it: no presence, no typing
    return;
  }
  if (state.room && state.room.id === roomId && !state.channel) {
    state.channel = channel;
    renderPresence();
  } else {
    await channel.leave(); // another room was opened meanwhile
  }
}

async function closeRoom() {
  const subs = state.subs;
  const channel = state.channel;
  state.subs = [];
  state.channel = null;
  clearTyping();
  renderPresence();
  await Promise.all([...subs.map((sub) => sub.unsubscribe()), channel ? channel.leave() : null]);
}

async function openRoom(roomId) {
  const { db } = state;
  await closeRoom();
  state.room = state.rooms.get(roomId) || (await db.get("chat_rooms", roomId));
  state.messages = new Map();
  clearTyping();
  state.myTyping = null;
  location.hash = `room=${encodeURIComponent(roomId)}`;
  renderRoomHeader();
  renderRooms();
  renderTyping();
  $("#room").hidden = false;
  $("#no-room").hidden = true;
  document.body.classList.add("in-room"); // on a phone: the conversation takes the screen
  // Subscribe first, then load the history: nothing falls between the two (ids dedupe).
  state.subs = [await db.subscribe("chat_messages", { filter: { roomId } }, onMessage)];
  await Promise.all([loadHistory(), joinChannel(roomId)]);
  $("#message").focus();
}

/** Back to the room list (the phone's "Rooms" button, or the browser's back button). */
async function leaveRoom() {
  await closeRoom();
  Object.assign(state, { room: null, messages: new Map(), myTyping: null });
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
// Typing goes through the room's channel: no store request, whatever the typing speed.
async function announceTyping() {
  const now = Date.now();
  const channel = state.channel;
  if (!channel || (state.myTyping && now - state.myTyping.at < TYPING_EVERY_MS)) return;
  state.myTyping = { at: now };
  await channel.send("typing", { on: true });
}

async function stopTyping(mine = state.myTyping) {
  if (state.myTyping === mine) state.myTyping = null;
  if (mine && state.channel) await state.channel.send("typing", { on: false });
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
  clearTyping(); // a "stopped typing" may have been missed while away (the channel rejoins itself)
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
