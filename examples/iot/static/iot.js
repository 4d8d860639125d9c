// The IoT page: the signed-in owner's devices, each with its latest readings per sensor, live.
import { $, clock, el, handle, showError, signInWith } from "/shared/app.js";

const HISTORY = 40; // readings kept per device
const LIVE_MS = 30_000; // a device that sent something this recently is "live"
const SVG = "http://www.w3.org/2000/svg";
const UNITS = { C: "°C", F: "°F" };
const state = { db: null, devices: new Map(), readings: new Map(), subs: [] }; // deviceId -> readings

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function sparkline(values) {
  const chart = svg("svg", { viewBox: "0 0 100 40", preserveAspectRatio: "none", role: "img" });
  if (values.length < 2) return chart;
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const points = values.map((v, i) => `${(i / (values.length - 1)) * 100},${36 - ((v - lo) / span) * 32}`);
  chart.append(svg("polyline", { class: "spark", points: points.join(" "), "vector-effect": "non-scaling-stroke" }));
  return chart;
}

function renderDevice(device) {
  const readings = state.readings.get(device.id) || [];
  const bySensor = new Map();
  for (const r of readings) {
    if (!bySensor.has(r.sensor)) bySensor.set(r.sensor, []);
    bySensor.get(r.sensor).push(r);
  }
  const last = readings.at(-1);
  const live = last && Date.now() - Date.parse(last.createdAt) < LIVE_MS;
  const card = el("article", { className: "card device" },
    el("div", { className: "device-head" },
      el("h3", { textContent: device.name }),
      el("span", { className: `state${live ? " live" : ""}`, textContent: live ? "live" : "idle" })),
    el("span", { className: "id", textContent: `device ${device.id}` }));
  if (bySensor.size === 0) card.append(el("p", { className: "waiting", textContent: "Waiting for its first reading…" }));
  for (const [sensor, series] of [...bySensor.entries()].sort()) {
    const latest = series.at(-1);
    const values = series.map((r) => r.value);
    const row = el("div", { className: "sensor" },
      el("span", { className: "name", textContent: sensor }),
      el("span", { className: "value" }, String(latest.value), el("small", { textContent: UNITS[latest.unit] ?? latest.unit ?? "" })),
      sparkline(values),
      el("span", { className: "range" },
        el("span", { textContent: `min ${Math.min(...values)} · max ${Math.max(...values)}` }),
        el("span", { className: "at", textContent: clock(latest.createdAt) })));
    row.dataset.sensor = sensor;
    card.append(row);
  }
  card.dataset.deviceId = device.id;
  return card;
}

function render() {
  const devices = [...state.devices.values()].sort((a, b) => a.name.localeCompare(b.name));
  $("#device-count").textContent = String(devices.length);
  $("#no-devices").hidden = devices.length > 0;
  $("#devices").replaceChildren(...devices.map(renderDevice));
}

function addReading(reading) {
  const series = state.readings.get(reading.deviceId) || [];
  if (series.some((r) => r.id === reading.id)) return;
  series.push(reading);
  series.sort((a, b) => (a.id < b.id ? -1 : 1)); // ids are time-ordered
  state.readings.set(reading.deviceId, series.slice(-HISTORY));
  render();
}

async function load() {
  const { db } = state;
  await Promise.all(state.subs.map((s) => s.unsubscribe()));
  const devices = await db.list("devices", { limit: 100 }); // the guard lists only mine
  state.devices = new Map(devices.items.map((d) => [d.id, d]));
  // One subscription per device (the guard wants one device id), then its latest readings.
  state.subs = await Promise.all(
    devices.items.map((d) => db.subscribe("sensor_readings", { filter: { deviceId: d.id } }, (e) => addReading(e.data))),
  );
  await Promise.all(devices.items.map(async (d) => {
    const page = await db.list("sensor_readings", { filter: { deviceId: d.id }, limit: HISTORY, order: "desc" });
    for (const r of page.items) addReading(r);
  }));
  render();
}

async function ready(db) {
  state.db = db;
  await load();
  setInterval(render, 5000); // "live" turns "idle" when a device goes quiet
}

$("#refresh").addEventListener("click", handle(load));
signInWith({ key: "iot-login", ready, onReconnect: load });
