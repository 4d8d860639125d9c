// The dashboard page: live metric charts (SVG with time and value axes) and open alerts, over /client.js.
import { $, clock, el, showError, signInWith } from "/shared/app.js";

const POINTS = 60; // samples per chart
const SVG = "http://www.w3.org/2000/svg";
const MARGIN = { top: 8, right: 12, bottom: 24, left: 44 };
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200].map((s) => s * 1000);
const state = {
  db: null,
  me: null,
  series: { cpu: new Map(), memory: new Map() }, // type -> (metric id -> metric)
  alerts: new Map(), // id -> alert
};

// -- charts ----------------------------------------------------------------------------------
function addMetric(metric) {
  const series = state.series[metric.type];
  if (!series) return; // this page charts cpu and memory
  series.set(metric.id, metric);
  const ids = [...series.keys()].sort(); // ids are time-ordered
  for (const old of ids.slice(0, Math.max(0, ids.length - POINTS))) series.delete(old);
  renderChart(metric.type);
}

// Value ticks: 1, 2 or 5 times a power of ten, about ``count`` of them from 0 to ``max``.
function valueTicks(max, count = 5) {
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let v = 0; v <= max + step / 1000; v += step) ticks.push(v);
  return ticks;
}

// Time ticks: a round step (1 s ... 2 h) giving at most ``count`` labels over [from, to].
function timeTicks(from, to, count) {
  const step = TIME_STEPS.find((s) => (to - from) / s <= count) || TIME_STEPS.at(-1);
  const ticks = [];
  for (let t = Math.ceil(from / step) * step; t <= to; t += step) ticks.push(t);
  return ticks;
}

const shortValue = (v) => (v >= 1000 ? `${+(v / 1000).toFixed(1)}k` : String(+v.toFixed(1)));

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function renderChart(type) {
  const figure = $(`#chart-${type}`);
  const chart = figure.querySelector("svg");
  const width = chart.clientWidth || 300;
  const height = chart.clientHeight || 200;
  const max = Number(figure.dataset.max);
  const samples = [...state.series[type].values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  const times = samples.map((m) => Date.parse(m.createdAt));
  const to = times.length ? times.at(-1) : Date.now();
  const from = Math.min(times.length ? times[0] : to, to - 10_000); // at least 10 s wide
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - MARGIN.top - MARGIN.bottom;
  const x = (t) => MARGIN.left + ((t - from) / (to - from)) * plotW;
  const y = (v) => MARGIN.top + plotH - (Math.min(Math.max(v, 0), max) / max) * plotH;

  const grid = svg("g", { class: "grid" });
  const yAxis = svg("g", { class: "axis y-axis" });
  for (const v of valueTicks(max)) {
    grid.append(svg("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(v), y2: y(v) }));
    yAxis.append(svg("text", { x: MARGIN.left - 6, y: y(v) + 4, "text-anchor": "end" }, shortValue(v)));
  }
  const xAxis = svg("g", { class: "axis x-axis" });
  xAxis.append(svg("line", { class: "domain", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(0), y2: y(0) }));
  for (const t of timeTicks(from, to, Math.max(2, Math.floor(plotW / 80)))) {
    xAxis.append(svg("line", { x1: x(t), x2: x(t), y1: y(0), y2: y(0) + 4 }));
    xAxis.append(svg("text", { x: x(t), y: height - 6, "text-anchor": "middle" }, clock(t)));
  }
  const points = samples.map((m, i) => `${x(times[i]).toFixed(1)},${y(m.value).toFixed(1)}`);
  const parts = [grid, yAxis, xAxis];
  if (points.length) {
    parts.push(svg("path", { class: "area", d: `M${x(times[0])},${y(0)}L${points.join("L")}L${x(to)},${y(0)}Z` }));
    parts.push(svg("polyline", { class: "line", points: points.join(" ") }));
    const last = samples.at(-1);
    parts.push(svg("circle", { class: "dot", cx: x(to), cy: y(last.value), r: 3.5 }));
    figure.querySelector(".value").textContent = last.value.toFixed(type === "cpu" ? 1 : 0);
    figure.title = `${last.host} at ${clock(last.createdAt)}`;
  }
  chart.replaceChildren(...parts);
  figure.dataset.points = String(samples.length);
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
  $("#alert-count").textContent = String(alerts.filter((a) => !a.acknowledged).length);
  const isAdmin = state.me.role === "admin";
  $("#alerts").replaceChildren(
    ...alerts.map((alert) => {
      const item = el("li", { className: `alert${alert.acknowledged ? " acknowledged" : ""}` },
        el("span", { className: `severity ${alert.severity}`, textContent: alert.severity }),
        el("span", { className: "message", textContent: alert.message }),
        el("span", { className: "meta", textContent: `${alert.source} · ${clock(alert.createdAt)}` }));
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
async function ready(db, me) {
  state.db = db;
  state.me = me;
  // What the seed's DashboardClient subscribes to: every metric, and the open alerts.
  await Promise.all([
    db.subscribe("metrics", {}, (event) => addMetric(event.data)),
    db.subscribe("alerts", { filter: { acknowledged: false } }, onAlert),
  ]);
  await Promise.all([loadMetrics(), loadAlerts()]);
  for (const type of Object.keys(state.series)) renderChart(type);
  new ResizeObserver(() => Object.keys(state.series).forEach(renderChart)).observe($(".charts"));
}

signInWith({
  key: "dashboard-login",
  ready,
  onReconnect: () => Promise.all([loadMetrics(), loadAlerts()]), // catch up on what was missed
  describe: (me) => `${me.name} (${me.role}, dev token)`,
});
