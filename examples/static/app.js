// What every example page shares: the DEV ONLY sign-in, the socket, the connection pill, errors.
import { connect } from "/client.js";

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

export function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

export function showError(error) {
  const status = $("#status");
  if (!status) return;
  status.textContent = error ? `${error.code || "ERROR"}: ${error.message}` : "";
  status.hidden = !error;
}

export function clearError() {
  showError(null);
}

const PALETTE = ["#2f6fed", "#d9480f", "#2b8a3e", "#9c36b5", "#c2255c", "#0b7285", "#e67700", "#5f3dc4"];

/** A stable colour per name (avatars, cursors). */
export function colorOf(name) {
  let hash = 0;
  for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

export function avatar(name) {
  const node = el("span", { className: "avatar", textContent: String(name || "?").slice(0, 1), title: name });
  node.style.background = colorOf(name);
  return node;
}

export function clock(value) {
  return new Date(value).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** DEV ONLY: trade the sign-in form's fields for a JWT at the example's /dev/login. */
export async function devLogin(fields) {
  const response = await fetch("/dev/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(fields),
  });
  if (response.status === 404) {
    throw new Error("this server has no /dev/login: start the example with --dev to sign in from this page");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `sign-in failed (${response.status})`);
  return body;
}

export const socketUrl = () => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;

/** The socket, with the connection pill kept up to date. ``token``: null (anonymous) or a function. */
export async function openSocket(token, { onReconnect } = {}) {
  const db = await connect(socketUrl(), token ? { token } : {});
  const pill = $("#connection");
  const set = (text, open) => {
    pill.textContent = text;
    pill.classList.toggle("open", open);
  };
  set("connected", true);
  db.on("disconnect", () => set("reconnecting…", false));
  db.on("reconnect", () => {
    set("connected", true);
    if (onReconnect) Promise.resolve(onReconnect()).catch(showError);
  });
  db.on("close", (_client, error) => set(error ? `closed: ${error.message}` : "closed", false));
  return db;
}

/**
 * Wire the page's #login form: its named fields go to /dev/login, the token opens the socket, and
 * ``ready(db, me)`` builds the app. The fields are remembered for the tab (sessionStorage), so a
 * reload signs in again. Returns nothing; errors show under the form or in the #status toast.
 */
export function signInWith({ key, ready, onReconnect, describe = (me) => me.name }) {
  const form = $("#login");
  const error = $("#login-error");
  const start = async (fields) => {
    const first = await devLogin(fields);
    let token = first.token;
    const db = await openSocket(
      // Called again on every reconnect: a fresh dev token each time.
      async () => {
        const current = token;
        token = null;
        return current || (await devLogin(fields)).token;
      },
      { onReconnect },
    );
    sessionStorage.setItem(key, JSON.stringify(fields));
    form.hidden = true;
    $("#app").hidden = false;
    $("#whoami").textContent = `signed in as ${describe(first.user)}`;
    const out = $("#sign-out");
    if (out) {
      out.hidden = false;
      out.onclick = () => {
        sessionStorage.removeItem(key);
        db.close();
        location.reload();
      };
    }
    await ready(db, first.user);
  };
  const attempt = (fields) => {
    error.hidden = true;
    start(fields).catch((err) => {
      if (!$("#app").hidden) return showError(err); // signed in; something later failed
      error.textContent = err.message;
      error.hidden = false;
    });
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const fields = Object.fromEntries([...new FormData(form)].map(([k, v]) => [k, String(v).trim()]));
    attempt(fields);
  });
  const remembered = JSON.parse(sessionStorage.getItem(key) || "null");
  if (remembered) {
    for (const [name, value] of Object.entries(remembered)) {
      if (form.elements[name]) form.elements[name].value = value;
    }
    attempt(remembered);
  }
}

/** Run ``fn`` for a form submit or click; errors go to the #status toast. */
export function handle(fn) {
  return (event) => {
    if (event && event.preventDefault) event.preventDefault();
    clearError();
    Promise.resolve()
      .then(fn)
      .catch(showError);
  };
}
