// The collab page: a shared plain-text editor with live cursors, over /client.js.
// Who is there and where their cursors are travel on the document's channel (doc:<id>:
// presence and a "cursor" event), never stored.
//
// The document's text never leaves the server as such (``content`` is protected): it travels as
// operations ({type: "insert", position, text} or {type: "delete", position, length}). The page
// keeps ``base``, the text the server's operations give in the order they arrive (the server's
// order), and ``pending``, my operations not back yet; the editor shows base + pending.
// My edits become operations, sent one at a time, so they reach the server in the order typed.
import { $, avatar, colorOf, el, handle, showError, signInWith } from "/shared/app.js";

const CURSOR_EVERY_MS = 120; // move my cursor at most this often
const PAGE = 200; // operations per list page when loading a document

const state = {
  db: null,
  me: null,
  documents: new Map(), // id -> document (no content: it is protected)
  doc: null, // the open document
  subs: [],
  base: "", // the text after every operation received, in arrival order
  applied: new Set(), // ids of the operations folded into base
  loading: null, // operations that arrive while the history loads (then folded in after it)
  pending: [], // my operations sent or queued, not back yet: {op, id, sent}
  shown: "", // what the editor shows (base + pending)
  remoteSinceShown: [], // others' operations folded since the editor was last updated
  channel: null, // the open document's channel: its members are who is there
  cursors: new Map(), // userId -> {userId, position} of the others (from the channel)
  cursorTimer: null,
};

const editor = () => $("#editor");

// -- text operations -----------------------------------------------------------------------
function apply(text, op) {
  const position = Math.min(op.position, text.length);
  if (op.type === "insert") return text.slice(0, position) + op.text + text.slice(position);
  return text.slice(0, position) + text.slice(position + op.length);
}

// Where a caret at ``index`` goes when ``op`` is applied before it.
function shift(index, op) {
  if (op.position > index) return index;
  if (op.type === "insert") return index + op.text.length;
  return Math.max(op.position, index - op.length);
}

// The operations that turn ``before`` into ``after`` (one changed span: what typing makes).
function diff(before, after) {
  let start = 0;
  while (start < before.length && start < after.length && before[start] === after[start]) start++;
  let end = 0;
  while (end < before.length - start && end < after.length - start
    && before[before.length - 1 - end] === after[after.length - 1 - end]) end++;
  const ops = [];
  const removed = before.length - start - end;
  const added = after.slice(start, after.length - end);
  if (removed > 0) ops.push({ type: "delete", position: start, length: removed });
  if (added) ops.push({ type: "insert", position: start, text: added });
  return ops;
}

// -- the editor ------------------------------------------------------------------------------
function show() {
  const text = state.pending.reduce((t, p) => apply(t, p.op), state.base);
  const box = editor();
  if (text !== box.value) {
    // Keep my caret where it was relative to the text around it.
    const { selectionStart, selectionEnd } = box;
    const moved = [...state.remoteSinceShown];
    const start = moved.reduce((i, op) => shift(i, op), selectionStart);
    const end = moved.reduce((i, op) => shift(i, op), selectionEnd);
    box.value = text;
    if (document.activeElement === box) {
      box.setSelectionRange(start, end);
      if (start !== selectionStart || end !== selectionEnd) moveCursorSoon(); // tell the others
    }
  }
  state.remoteSinceShown = [];
  state.shown = text;
  renderCursors();
}

function onLocalInput() {
  const box = editor();
  for (const op of diff(state.shown, box.value)) state.pending.push({ op, id: null, sent: false });
  state.shown = box.value;
  sendPending().catch(showError);
  moveCursorSoon();
}

async function sendPending() {
  const next = state.pending.find((p) => !p.sent);
  if (!next || state.pending.some((p) => p.sent && !p.id)) return; // one in flight at a time
  next.sent = true;
  try {
    const record = await state.db.insert("document_operations", { documentId: state.doc.id, ...next.op });
    next.id = record.id;
  } catch (error) {
    state.pending = state.pending.filter((p) => p !== next); // refused: the server never had it
    show();
    throw error;
  }
  await sendPending();
}

function onOperation(event) {
  const op = event.data;
  if (state.loading) {
    state.loading.push(op);
    return;
  }
  fold(op);
  show();
}

function fold(op) {
  if (state.applied.has(op.id)) return;
  state.applied.add(op.id);
  state.base = apply(state.base, op);
  // Others' cursors move with the text (their owners' next update will say where exactly).
  for (const c of state.cursors.values()) if (c.userId !== op.userId) c.position = shift(c.position, op);
  const mine = op.userId === state.me.id
    && state.pending.find((p) => p.id === op.id || (p.sent && p.id === null));
  if (mine) {
    state.pending = state.pending.filter((p) => p !== mine);
  } else {
    state.remoteSinceShown.push(op);
    for (const p of state.pending) if (!p.sent) p.op = { ...p.op, position: shift(p.op.position, op) };
  }
}

async function loadHistory(documentId) {
  const ops = [];
  let cursor = null;
  do {
    const page = await state.db.list("document_operations", { filter: { documentId }, limit: PAGE, cursor });
    ops.push(...page.items);
    cursor = page.cursor;
  } while (cursor);
  // The server's order is each operation's version; one not stamped yet is the newest.
  const order = (op) => op.version ?? Number.MAX_SAFE_INTEGER;
  ops.sort((a, b) => order(a) - order(b) || (a.id < b.id ? -1 : 1));
  return ops;
}

// -- cursors ---------------------------------------------------------------------------------
function moveCursorSoon() {
  if (state.cursorTimer || !state.doc) return;
  state.cursorTimer = setTimeout(() => {
    state.cursorTimer = null;
    moveCursor().catch(showError);
  }, CURSOR_EVERY_MS);
}

// My cursor goes to the others as a "cursor" message on the document's channel: no store request.
async function moveCursor() {
  const box = editor();
  const channel = state.channel;
  if (!channel) return;
  try {
    await channel.send("cursor", { position: box.selectionStart, selectionEnd: box.selectionEnd });
  } catch (error) {
    if (error.code !== "RATE_LIMITED" && !channel.closed) throw error; // the next move says it again
  }
}

const isIndex = (n) => Number.isInteger(n) && n >= 0;

/** The document's channel: presence changes, and the others' "cursor" messages. */
function onChannel(message) {
  if (message.event === "cursor") {
    const userId = message.from && message.from.userId; // from the sender's token, never its data
    const data = message.data || {};
    if (typeof userId !== "string" || userId === state.me.id || !isIndex(data.position)) return;
    state.cursors.set(userId, { userId, username: userId, position: data.position });
    renderCursors();
    return;
  }
  if (message.event === "member_added") moveCursor().catch(showError); // so the newcomer sees mine
  if (message.event === "member_removed" && message.data) {
    const gone = message.data.userId;
    if (state.channel && ![...state.channel.members.values()].some((m) => m.userId === gone)) state.cursors.delete(gone);
    renderCursors();
  }
  renderPresence();
}

/** Who is there: the channel's members, one entry per user (a user may have several tabs). */
function renderPresence() {
  const members = state.channel ? [...state.channel.members.values()] : [];
  const users = [...new Set(members.map((m) => m.userId).filter((id) => typeof id === "string"))].sort();
  $("#presence").replaceChildren(
    ...users.map((id) => {
      const person = el("span", { className: "person" }, avatar(id), id === state.me.id ? `${id} (you)` : id);
      person.dataset.user = id;
      return person;
    }),
  );
}

// Pixel position of the caret at ``index`` in the textarea: a hidden copy of its text, styled
// the same, with a marker where the caret is.
function caretPoint(box, index) {
  const mirror = state.mirror || (state.mirror = el("div", { className: "mirror" }));
  if (!mirror.isConnected) $("#cursors").append(mirror); // clipped by the layer: never scrolls the page
  Object.assign(mirror.style, {
    position: "absolute", visibility: "hidden", top: "0", left: "0", width: `${box.offsetWidth}px`, height: "auto",
  });
  const marker = el("span", { textContent: "\u200b" });
  mirror.replaceChildren(document.createTextNode(box.value.slice(0, index)), marker);
  return { x: marker.offsetLeft - box.scrollLeft, y: marker.offsetTop - box.scrollTop, height: marker.offsetHeight };
}

function renderCursors() {
  const box = editor();
  const layer = $("#cursors");
  if (!state.doc) return layer.replaceChildren();
  const others = [...state.cursors.values()].filter((c) => c.userId !== state.me.id);
  layer.replaceChildren(
    ...others.map((c) => {
      const { x, y, height } = caretPoint(box, Math.min(c.position, box.value.length));
      const color = colorOf(c.username);
      const mark = el("span", { className: "remote-cursor" }, el("span", { className: "label", textContent: c.username }));
      Object.assign(mark.style, { transform: `translate(${x}px, ${y}px)`, height: `${height}px`, background: color });
      mark.querySelector(".label").style.background = color;
      mark.dataset.user = c.userId;
      mark.dataset.position = String(c.position);
      mark.hidden = y < 0 || y > box.clientHeight;
      return mark;
    }),
  );
}

// -- documents -------------------------------------------------------------------------------
function renderDocuments() {
  const docs = [...state.documents.values()].sort((a, b) => a.title.localeCompare(b.title));
  $("#no-documents").hidden = docs.length > 0;
  $("#documents").replaceChildren(
    ...docs.map((doc) => {
      const owner = doc.ownerId === state.me.id ? "yours" : `from ${doc.ownerId}`;
      const button = el("button", { type: "button" }, doc.title, el("small", { textContent: owner }));
      if (state.doc?.id === doc.id) button.classList.add("current");
      button.addEventListener("click", handle(() => openDocument(doc.id)));
      return el("li", {}, button);
    }),
  );
}

async function loadDocuments() {
  const [mine, shared] = await Promise.all([
    state.db.list("documents", { filter: { ownerId: state.me.id }, limit: 100 }),
    state.db.list("documents", { limit: 100 }),
  ]);
  state.documents = new Map([...mine.items, ...shared.items].map((d) => [d.id, d]));
  if (state.doc && state.documents.has(state.doc.id)) state.doc = state.documents.get(state.doc.id);
  renderDocuments();
}

function renderHeader() {
  const doc = state.doc;
  $("#doc-name").textContent = doc.title;
  // The document's own counter of applied edits (its `version` field), not the record's version.
  const edits = doc.version;
  $("#doc-edits").textContent = edits === 0 ? "no edits yet" : `${edits} edit${edits === 1 ? "" : "s"}`;
  const people = doc.collaborators.length ? doc.collaborators.join(", ") : "nobody yet";
  $("#doc-sharing").textContent = doc.ownerId === state.me.id
    ? `Yours, shared with ${people}.`
    : `Owned by ${doc.ownerId}, shared with ${people}.`;
  $("#share").hidden = doc.ownerId !== state.me.id;
  $("#share-with").value = doc.collaborators.join(", ");
}

async function closeDocument() {
  const subs = state.subs;
  const channel = state.channel;
  Object.assign(state, { subs: [], doc: null, channel: null, cursors: new Map(), pending: [] });
  await Promise.all([...subs.map((s) => s.unsubscribe()), channel ? channel.leave() : null]);
}

async function openDocument(id) {
  await closeDocument();
  const { db } = state;
  const doc = state.documents.get(id) || (await db.get("documents", id));
  Object.assign(state, { doc, base: "", applied: new Set(), loading: [], remoteSinceShown: [], shown: "" });
  location.hash = `doc=${encodeURIComponent(id)}`;
  renderHeader();
  renderDocuments();
  // Shown at once, editable once the text so far is in: nothing typed can go missing meanwhile.
  const box = editor();
  Object.assign(box, { value: "", readOnly: true, placeholder: "Loading…" });
  $("#document").hidden = false;
  $("#no-document").hidden = true;
  // Subscribe first, then read the history: operations in between are held and folded after it.
  state.subs = await Promise.all([
    db.subscribe("documents", { filter: { id } }, (event) => {
      state.doc = event.data;
      state.documents.set(id, event.data);
      renderHeader();
    }),
    db.subscribe("document_operations", { filter: { documentId: id } }, onOperation),
  ]);
  const history = await loadHistory(id);
  const held = state.loading;
  state.loading = null;
  for (const op of [...history, ...held]) fold(op);
  state.remoteSinceShown = [];
  const channel = await db.join(`doc:${id}`, {}, onChannel);
  if (state.doc?.id !== id || state.channel) {
    await channel.leave(); // another document was opened meanwhile
    return;
  }
  state.channel = channel;
  show();
  Object.assign(box, { readOnly: false, placeholder: "Start typing…" });
  renderPresence();
  box.focus();
  await moveCursor();
}

async function createDocument() {
  const collaborators = $("#doc-collaborators").value.split(",").map((s) => s.trim()).filter(Boolean);
  const doc = await state.db.insert("documents", { title: $("#doc-title").value.trim(), collaborators });
  $("#new-document").reset();
  state.documents.set(doc.id, doc);
  await openDocument(doc.id);
}

async function share() {
  const collaborators = $("#share-with").value.split(",").map((s) => s.trim()).filter(Boolean);
  state.doc = await state.db.update("documents", state.doc.id, { collaborators });
  renderHeader();
}

// -- start -----------------------------------------------------------------------------------
async function openHashDocument() {
  const wanted = new URLSearchParams(location.hash.slice(1)).get("doc");
  if (wanted && wanted !== state.doc?.id) await openDocument(wanted);
}

async function ready(db, me) {
  state.db = db;
  state.me = me;
  await loadDocuments();
  window.addEventListener("hashchange", () => openHashDocument().catch(showError));
  window.addEventListener("focus", () => loadDocuments().catch(showError));
  window.addEventListener("pagehide", () => closeDocument());
  await openHashDocument();
}

async function onReconnect() {
  await loadDocuments();
  if (state.doc) await openDocument(state.doc.id); // operations may have been missed: replay
}

editor().addEventListener("input", onLocalInput);
for (const type of ["keyup", "click", "select"]) editor().addEventListener(type, moveCursorSoon);
editor().addEventListener("scroll", renderCursors);
new ResizeObserver(() => renderCursors()).observe(editor());
$("#refresh").addEventListener("click", handle(loadDocuments));
$("#new-document").addEventListener("submit", handle(createDocument));
$("#share").addEventListener("submit", handle(share));
signInWith({ key: "collab-login", ready, onReconnect });
