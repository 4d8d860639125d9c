// The leaderboard page: anyone watches the ranking reorder live as scores arrive; a player who
// signs in also follows their own matches (the server shows them only theirs).
import { $, avatar, clock, devLogin, el, handle, openSocket, showError } from "/shared/app.js";

const KEY = "leaderboard-login";
const state = { db: null, me: null, entries: new Map(), matches: new Map() }; // userId -> entry, id -> match

function ranked() {
  return [...state.entries.values()].sort(
    (a, b) => b.highScore - a.highScore || a.gamesPlayed - b.gamesPlayed || a.userId.localeCompare(b.userId),
  );
}

// Re-render the ranking; rows that changed place glide there (FLIP: first, last, invert, play).
function renderRanking(changed = null) {
  const list = $("#ranking");
  const before = new Map([...list.children].map((li) => [li.dataset.userId, li.getBoundingClientRect().top]));
  const entries = ranked();
  $("#player-count").textContent = String(entries.length);
  $("#no-scores").hidden = entries.length > 0;
  list.replaceChildren(
    ...entries.map((entry, i) => {
      const item = el("li", {},
        el("span", { className: "rank", textContent: String(i + 1) }),
        el("span", { className: "player" }, avatar(entry.userId), el("span", { className: "name", textContent: entry.userId })),
        el("span", { className: "games", textContent: String(entry.gamesPlayed) }),
        el("span", { className: "score", textContent: entry.highScore.toLocaleString() }));
      item.dataset.userId = entry.userId;
      item.dataset.rank = String(i + 1);
      if (state.me && entry.userId === state.me.id) item.classList.add("me");
      if (entry.userId === changed) item.classList.add("changed");
      return item;
    }),
  );
  for (const item of list.children) {
    const was = before.get(item.dataset.userId);
    const delta = was === undefined ? 0 : was - item.getBoundingClientRect().top;
    if (delta) item.animate([{ transform: `translateY(${delta}px)` }, { transform: "none" }], { duration: 450, easing: "ease-out" });
  }
}

function renderMatches() {
  const matches = [...state.matches.values()].sort((a, b) => (a.id < b.id ? 1 : -1)); // newest first
  $("#no-matches").hidden = matches.length > 0;
  $("#matches").replaceChildren(
    ...matches.map((m) => {
      const scores = m.scores && typeof m.scores === "object" ? m.scores : {};
      const players = m.players.map((p) => (m.status === "finished" ? `${p} ${scores[p] ?? 0}` : p)).join(" vs ");
      const item = el("li", { className: "match" },
        el("span", { className: "head" },
          el("span", { className: `status ${m.status}`, textContent: m.status }),
          el("span", { textContent: clock(m.updatedAt || m.createdAt) })),
        el("span", { className: "players", textContent: players }));
      item.dataset.matchId = m.id;
      return item;
    }),
  );
}

async function loadRanking() {
  const page = await state.db.list("leaderboard", { limit: 100 });
  state.entries = new Map(page.items.map((e) => [e.userId, e]));
  renderRanking();
}

async function loadMatches() {
  const page = await state.db.list("matches", { limit: 50, order: "desc" });
  state.matches = new Map(page.items.map((m) => [m.id, m]));
  renderMatches();
}

async function watch(token) {
  const reload = () => Promise.all([loadRanking(), state.me ? loadMatches() : null]);
  state.db = await openSocket(token, { onReconnect: reload });
  await state.db.subscribe("leaderboard", {}, (event) => {
    state.entries.set(event.data.userId, event.data);
    renderRanking(event.data.userId);
  });
  if (state.me) {
    // The server narrows this to the matches I play in.
    await state.db.subscribe("matches", {}, (event) => {
      state.matches.set(event.data.id, event.data);
      renderMatches();
    });
  }
  await reload();
}

async function signIn(fields) {
  const first = await devLogin({ ...fields, role: "player" });
  let token = first.token;
  state.me = first.user;
  if (state.db) state.db.close(); // the anonymous socket: the player gets their own
  await watch(async () => {
    const current = token;
    token = null;
    return current || (await devLogin({ ...fields, role: "player" })).token;
  });
  sessionStorage.setItem(KEY, JSON.stringify(fields));
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#whoami").textContent = `playing as ${state.me.name}`;
  $("#sign-out").hidden = false;
}

function attempt(fields) {
  $("#login-error").hidden = true;
  signIn(fields).catch((error) => {
    $("#login-error").textContent = error.message;
    $("#login-error").hidden = false;
  });
}

$("#login").addEventListener("submit", (event) => {
  event.preventDefault();
  attempt({ name: $("#login-name").value.trim() });
});
$("#sign-out").addEventListener("click", handle(() => {
  sessionStorage.removeItem(KEY);
  location.reload();
}));

const remembered = JSON.parse(sessionStorage.getItem(KEY) || "null");
if (remembered) {
  $("#login-name").value = remembered.name;
  attempt(remembered);
} else {
  watch(null).catch(showError); // watching needs no account
}
