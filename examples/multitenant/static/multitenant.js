// The multi-tenant page: a tenant's project board (projects, their tasks, progress), live.
// The server pins every read and write to the tenant in the user's token: nothing here filters.
import { $, $$, el, handle, signInWith } from "/shared/app.js";

const state = { db: null, me: null, projects: new Map(), tasks: new Map() };

const isAdmin = () => state.me.role === "admin";

function deleteButton(label, action) {
  const button = el("button", { type: "button", className: "icon-button delete", textContent: "×", title: label });
  button.setAttribute("aria-label", label);
  button.addEventListener("click", handle(action));
  return button;
}

function renderTask(task) {
  const box = el("input", { type: "checkbox", checked: task.done });
  box.addEventListener("change", handle(() => state.db.update("tasks", task.id, { done: box.checked }).then(upsertTask)));
  const item = el("li", { className: `task${task.done ? " done" : ""}` },
    el("label", {}, box, el("span", { className: "title", textContent: task.title })),
    el("span", { className: "by", textContent: task.createdBy }),
    isAdmin() ? deleteButton(`delete task ${task.title}`, () => state.db.delete("tasks", task.id)) : null);
  item.dataset.taskId = task.id;
  return item;
}

function renderProject(project) {
  const tasks = [...state.tasks.values()].filter((t) => t.projectId === project.id).sort((a, b) => (a.id < b.id ? -1 : 1));
  const done = tasks.filter((t) => t.done).length;
  const bar = el("span");
  bar.style.width = `${tasks.length ? (100 * done) / tasks.length : 0}%`;
  const input = el("input", { maxLength: 200, placeholder: "Add a task", required: true });
  input.setAttribute("aria-label", `new task in ${project.name}`);
  const form = el("form", { className: "add-task", autocomplete: "off" }, input, el("button", { type: "submit", textContent: "Add" }));
  form.addEventListener("submit", handle(async () => {
    const title = input.value.trim();
    input.value = "";
    upsertTask(await state.db.insert("tasks", { projectId: project.id, title }));
  }));
  const card = el("section", { className: "card project" },
    el("div", { className: "project-head" },
      el("h3", {}, project.name, project.description ? el("p", { textContent: project.description }) : null),
      isAdmin() ? deleteButton(`delete project ${project.name}`, () => state.db.delete("projects", project.id)) : null),
    el("div", { className: "progress" }, bar),
    el("span", { className: "progress-text", textContent: tasks.length ? `${done} of ${tasks.length} done` : "No tasks yet" }),
    el("ul", { className: "tasks" }, ...tasks.map(renderTask)),
    form);
  card.dataset.projectId = project.id;
  return card;
}

function render() {
  const projects = [...state.projects.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  $("#no-projects").hidden = projects.length > 0;
  // Keep what is being typed in the "Add a task" boxes (and which one has focus) across a re-render.
  const drafts = new Map($$(".project").map((card) => [card.dataset.projectId, $(".add-task input", card).value]));
  const focused = document.activeElement?.matches?.(".add-task input")
    ? document.activeElement.closest(".project").dataset.projectId : null;
  $("#board").replaceChildren(...projects.map(renderProject));
  for (const card of $$(".project")) {
    const input = $(".add-task input", card);
    input.value = drafts.get(card.dataset.projectId) || "";
    if (card.dataset.projectId === focused) input.focus();
  }
}

function upsertProject(project) {
  state.projects.set(project.id, project);
  render();
}

function upsertTask(task) {
  state.tasks.set(task.id, task);
  render();
}

function onEvent(name) {
  return (event) => {
    if (event.event === "delete") state[name].delete(event.data.id);
    else state[name].set(event.data.id, event.data);
    render();
  };
}

async function listAll(resource) {
  const items = [];
  let cursor = null;
  do {
    const page = await state.db.list(resource, { limit: 200, cursor });
    items.push(...page.items);
    cursor = page.cursor;
  } while (cursor);
  return items;
}

async function load() {
  const [projects, tasks] = await Promise.all([listAll("projects"), listAll("tasks")]);
  state.projects = new Map(projects.map((p) => [p.id, p]));
  state.tasks = new Map(tasks.map((t) => [t.id, t]));
  render();
}

async function addProject() {
  const data = { name: $("#project-name").value.trim() };
  const description = $("#project-description").value.trim();
  if (description) data.description = description;
  upsertProject(await state.db.insert("projects", data));
  $("#new-project").reset();
}

async function ready(db, me) {
  state.db = db;
  state.me = me;
  const tenant = $("#tenant");
  tenant.textContent = me.tenantId;
  tenant.hidden = false;
  await Promise.all([
    db.subscribe("projects", {}, onEvent("projects")),
    db.subscribe("tasks", {}, onEvent("tasks")),
  ]);
  await load();
}

$("#new-project").addEventListener("submit", handle(addProject));
signInWith({ key: "multitenant-login", ready, onReconnect: load, describe: (me) => `${me.name} (${me.role})` });
