// The dashboard page: live metric charts (plain SVG) and open alerts with acknowledge, over /client.js.
import { connect } from "/client.js";

const POINTS = 60; // samples per chart
const $ = (selector) => document.querySelector(selector);
const state = {
  db: null,
  me: null,
  series: { cpu: new Map(), memory: new Map() }, // type -> (metric id -> metric)
  alerts: new Map(), // id -> alert
};

// -- DEV ONLY sign-in: trade a name and a role for a JWT (examples/common.py dev_login_route) --
async function devLogin(name, role) {
  const response = await fetch("/dev/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name, role }),
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

// -- charts ----------------------------------------------------------------------------------
function addMetric(metric) {
  const series = state.series[metric.type];
  if (!series) return; // this page charts cpu and memory
  series.set(metric.id, metric);
  const ids = [...series.keys()].sort(); // ids are time-ordered
  for (const old of ids.slice(0, Math.max(0, ids.length - POINTS))) series.delete(old);
  renderChart(metric.type);
}

function renderChart(type) {
  const figure = $(`#chart-${type}`);
  const max = Number(figure.dataset.max);
  const samples = [...state.series[type].values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  const step = 300 / (POINTS - 1);
  const points = samples.map((m, i) => {
    const y = 100 - (Math.min(Math.max(m.value, 0), max) / max) * 100;
    return `${(i * step).toFixed(1)},${y.toFixed(1)}`;
  });
  figure.querySelector(".line").setAttribute("points", points.join(" "));
  figure.dataset.points = String(samples.length);
  const last = samples.at(-1);
  if (last) {
    figure.querySelector(".value").textContent = last.value.toFixed(type === "cpu" ? 1 : 0);
    figure.title = `${last.host} at ${new Date(last.createdAt).toLocaleTimeString()}`;
  }
}

async function loadMetrics() {
  await Promise.all(Object.keys(state.series).map(async (type) => {
    // A filter on the partition field lists just that partition; newest first, then charted in order.
    const page = await state.db.list("metrics", { filter: { type }, limit: POINTS, order: "desc" });
    for (const metric of page.items) addMetric(metric);
  }));
}

// -- alerts ----------------------------------------------------------------------------------
function renderAlerts() {
  const alerts = [...state.alerts.values()].sort((a, b) => (a.id < b.id ? 1 : -1)); // newest first
  $("#no-alerts").hidden = alerts.length > 0;
  const isAdmin = state.me.role === "admin";
  $("#alerts").replaceChildren(
    ...alerts.map((alert) => {
      const item = el("li", { className: `alert${alert.acknowledged ? " acknowledged" : ""}` },
        el("span", { className: `severity ${alert.severity}`, textContent: alert.severity }),
        el("span", { className: "message", textContent: alert.message }),
        el("span", { className: "meta", textContent: `${alert.source} · ${new Date(alert.createdAt).toLocaleTimeString()}` }));
      item.dataset.alertId = alert.id;
      if (alert.acknowledged) {
        item.append(el("span", { className: "acknowledged-by", textContent: `acknowledged by ${alert.acknowledgedBy}` }));
      } else {
        const button = el("button", { type: "button", className: "acknowledge", textContent: "Acknowledge" });
        if (isAdmin) {
          button.addEventListener("click", () => acknowledge(alert.id, button));
        } else {
          button.disabled = true;
          button.title = "Only admins can acknowledge alerts";
        }
        item.append(button);
      }
      return item;
    }),
  );
}

function onAlert(event) {
  state.alerts.set(event.data.id, event.data); // insert, or update (e.g. acknowledged by an admin)
  renderAlerts();
}

async function acknowledge(id, button) {
  button.disabled = true;
  showError(null);
  try {
    // The server's guard records who acknowledged; the page only says that it did.
    onAlert({ data: await state.db.update("alerts", id, { acknowledged: true }) });
  } catch (error) {
    button.disabled = false;
    showError(error);
  }
}

async function loadAlerts() {
  const page = await state.db.list("alerts", { filter: { acknowledged: false }, limit: 100, order: "desc" });
  for (const alert of page.items) state.alerts.set(alert.id, alert);
  renderAlerts();
}

// -- start -----------------------------------------------------------------------------------
async function start(name, role) {
  const first = await devLogin(name, role);
  let token = first.token;
  state.me = first.user;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  state.db = await connect(url, {
    token: async () => {
      const current = token;
      token = null;
      return current || (await devLogin(name, role)).token;
    },
  });
  sessionStorage.setItem("dashboard-login", JSON.stringify({ name, role }));
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#whoami").textContent = `signed in as ${state.me.name} (${state.me.role}, dev token)`;
  const connection = $("#connection");
  const setConnection = (text, open) => {
    connection.textContent = text;
    connection.classList.toggle("open", open);
  };
  setConnection("connected", true);
  state.db.on("disconnect", () => setConnection("reconnecting…", false));
  state.db.on("reconnect", () => {
    setConnection("connected", true);
    Promise.all([loadMetrics(), loadAlerts()]).catch(showError); // catch up on what was missed
  });
  state.db.on("close", (_client, error) => setConnection(error ? `closed: ${error.message}` : "closed", false));

  // What the seed's DashboardClient subscribes to: every metric, and the open alerts.
  await Promise.all([
    state.db.subscribe("metrics", {}, (event) => addMetric(event.data)),
    state.db.subscribe("alerts", { filter: { acknowledged: false } }, onAlert),
  ]);
  await Promise.all([loadMetrics(), loadAlerts()]);
}

function signIn(name, role) {
  const error = $("#login-error");
  error.hidden = true;
  start(name, role).catch((err) => {
    if (!$("#app").hidden) return showError(err);
    error.textContent = err.message;
    error.hidden = false;
  });
}

$("#login").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("#login-name").value.trim(), $("#login-role").value);
});
const remembered = JSON.parse(sessionStorage.getItem("dashboard-login") || "null");
if (remembered) {
  $("#login-name").value = remembered.name;
  $("#login-role").value = remembered.role;
  signIn(remembered.name, remembered.role);
}
