// The notifications page: a bell with the unread count and a live list, over /client.js.
// Notifications are marked read only when the user opens one (or asks for all): marking read
// is an update, and the update comes back as an event, which must never mark anything again.
import { $, clock, el, handle, showError, signInWith } from "/shared/app.js";

const state = { db: null, me: null, items: new Map() }; // id -> notification

function render() {
  const items = [...state.items.values()].sort((a, b) => (a.id < b.id ? 1 : -1)); // newest first
  const unread = items.filter((n) => !n.read).length;
  const count = $("#unread-count");
  count.textContent = unread > 99 ? "99+" : String(unread);
  count.hidden = unread === 0;
  $("#bell").setAttribute("aria-label", `notifications, ${unread} unread`);
  $("#mark-all").disabled = unread === 0;
  $("#no-notifications").hidden = items.length > 0;
  $("#notifications").replaceChildren(
    ...items.map((n) => {
      const button = el("button", { type: "button" },
        el("span", { className: "dot" }),
        el("span", { className: "title", textContent: n.title }),
        n.body ? el("span", { className: "body", textContent: n.body }) : null,
        el("span", { className: "when", textContent: `${n.senderName ? `from ${n.senderName}` : n.type} · ${clock(n.createdAt)}` }));
      button.addEventListener("click", handle(() => markRead(n)));
      const item = el("li", { className: n.read ? "read" : "unread" }, button);
      item.dataset.id = n.id;
      return item;
    }),
  );
}

function remember(notification) {
  state.items.set(notification.id, notification);
  render();
}

async function markRead(notification) {
  if (notification.read) return; // already read: nothing to write
  remember(await state.db.update("notifications", notification.id, { read: true }));
}

async function markAllRead() {
  const unread = [...state.items.values()].filter((n) => !n.read);
  await Promise.all(unread.map(markRead));
}

async function load() {
  const page = await state.db.list("notifications", { limit: 50, order: "desc" });
  for (const n of page.items) state.items.set(n.id, n);
  render();
}

function togglePanel(open = $("#panel").hidden) {
  $("#panel").hidden = !open;
  $("#bell").setAttribute("aria-expanded", String(open));
}

async function send() {
  const to = $("#send-to").value.trim();
  const body = $("#send-body").value.trim();
  const data = { userId: to, type: "message", title: $("#send-title").value.trim() }; // the server adds who sent it
  if (body) data.body = body;
  await state.db.insert("notifications", data);
  $("#send").reset();
  $("#sent").textContent = `Sent to ${to} at ${clock(Date.now())}.`;
}

async function ready(db, me) {
  state.db = db;
  state.me = me;
  // The server pins this subscription to my own notifications, whatever the filter says.
  await db.subscribe("notifications", {}, (event) => remember(event.data));
  await load();
  $("#bell").hidden = false;
  togglePanel(true); // the list first, at every width; the bell folds it away
}

$("#bell").addEventListener("click", () => togglePanel());
$("#mark-all").addEventListener("click", handle(markAllRead));
$("#send").addEventListener("submit", handle(send));
signInWith({ key: "notifications-login", ready, onReconnect: load });
