"""The multi-tenant example end to end: no record of one tenant ever reaches another.

Three tenants with an admin and a member each work through real sockets at the same time. The
randomized test mixes inserts, updates, deletes, gets, lists and subscriptions from random users,
including attempts to spoof ``tenantId`` in data and filters and to touch other tenants' records,
and checks every frame each connection receives against a model of what its tenant owns.
"""

from __future__ import annotations

import random
import uuid
from contextlib import AsyncExitStack

import pytest
import pytest_asyncio
from example_process import running_example
from ws_helpers import connect

from examples.common import Options, make_token
from examples.multitenant.app import create_app

SECRET = "multitenant-test-secret-with-enough-bytes"
TENANTS = ("acme", "globex", "initech")
OPERATIONS = 150
RESOURCES = ("projects", "tasks")


@pytest_asyncio.fixture
async def app():
    options = Options(port=0, host="127.0.0.1", db=f"memory://mt-{uuid.uuid4().hex}", jwt_secret=SECRET)
    db, plugin, _jobs = await create_app(options)
    try:
        yield db, plugin
    finally:
        await db.disconnect()


def login(plugin, sub, tenant=None, role="user"):
    claims = {"role": role} if tenant is None else {"role": role, "tenantId": tenant}
    return connect(plugin.url, token=make_token(SECRET, sub, **claims))


async def ok(client, type, **fields):
    reply = await client.call(type, **fields)
    assert reply["type"] != "error", reply
    return reply


async def refused(client, type, **fields):
    reply = await client.call(type, **fields)
    assert (reply["type"], reply.get("code")) == ("error", "FORBIDDEN"), reply
    return reply


async def test_the_seed_story_one_tenant_works_the_other_sees_nothing(app):
    db, plugin = app
    async with (
        login(plugin, "ada", "acme", "admin") as ada,
        login(plugin, "bert", "acme") as bert,
        login(plugin, "cleo", "globex", "admin") as cleo,
    ):
        for client in (ada, bert, cleo):
            for resource in RESOURCES:
                sub = await ok(client, "subscribe", resource=resource, filter={"tenantId": "acme"})
        assert sub["filter"] == {"tenantId": "globex"}  # cleo's spoofed filter, overridden

        project = (await ok(bert, "insert", resource="projects",
                            data={"name": "Rocket", "tenantId": "globex", "createdBy": "cleo"}))["data"]
        assert (project["tenantId"], project["createdBy"]) == ("acme", "bert")
        task = (await ok(bert, "insert", resource="tasks", data={"projectId": project["id"], "title": "Fuel"}))["data"]
        assert task["tenantId"] == "acme"
        # An update cannot move a record to another tenant.
        moved = await ok(bert, "update", resource="projects", id=project["id"], data={"name": "Rocket 2", "tenantId": "globex"})
        assert moved["data"]["tenantId"] == "acme"
        # Only admins delete.
        await refused(bert, "delete", resource="tasks", id=task["id"])
        await ok(ada, "delete", resource="tasks", id=task["id"])

        expected = [("projects", "insert"), ("tasks", "insert"), ("projects", "update"), ("tasks", "delete")]
        for client in (ada, bert):
            assert [(f["resource"], f["event"]) for f in await client.sync()] == expected

        # Globex sees nothing of it and cannot touch it; a task cannot hang off acme's project.
        await refused(cleo, "get", resource="projects", id=project["id"])
        await refused(cleo, "update", resource="projects", id=project["id"], data={"name": "mine"})
        await refused(cleo, "delete", resource="projects", id=project["id"])
        await refused(cleo, "insert", resource="tasks", data={"projectId": project["id"], "title": "x"})
        for filter in (None, {"tenantId": "acme"}, {"tenantId": {"$ne": "globex"}}):
            assert (await ok(cleo, "list", resource="projects", filter=filter))["data"] == []
        assert await cleo.sync() == []
        assert (await db.resources.projects.get(project["id"]))["name"] == "Rocket 2"


async def test_another_tenants_ids_can_be_neither_probed_nor_squatted(app):
    # Inserting with another tenant's record id must not answer CONFLICT (which says the id
    # exists): a client-chosen id is refused the same way whether it is taken or free.
    db, plugin = app
    async with login(plugin, "gil", "globex", "admin") as gil, login(plugin, "bert", "acme") as bert:
        theirs = (await ok(gil, "insert", resource="projects", data={"name": "Secret merger"}))["data"]
        task = (await ok(gil, "insert", resource="tasks", data={"projectId": theirs["id"], "title": "t"}))["data"]
        answers = []
        for resource, taken in (("projects", theirs["id"]), ("tasks", task["id"])):
            for id in (taken, "AAAAAAAAAAAAAAAAAAAAAA"):
                data = {"id": id, "name": "mine", "projectId": "x", "title": "mine"}
                reply = await bert.call("insert", resource=resource, data=data)
                answers.append((reply["type"], reply.get("code")))
        assert set(answers) == {("error", "VALIDATION_ERROR")}
        # The other tenant's records are untouched, and bert's get of them says nothing more.
        assert (await db.resources.projects.get(theirs["id"]))["name"] == "Secret merger"
        assert await db.resources.projects.count() == 1
        missing = await bert.call("get", resource="projects", id="AAAAAAAAAAAAAAAAAAAAAA")
        existing = await bert.call("get", resource="projects", id=theirs["id"])
        assert missing["code"] == existing["code"]


async def test_a_token_without_a_tenant_is_refused_everything(app):
    db, plugin = app
    project = await db.resources.projects.insert({"tenantId": "acme", "name": "P", "createdBy": "ada"})
    async with login(plugin, "drifter", tenant=None, role="admin") as drifter:
        for resource in RESOURCES:
            reply = await refused(drifter, "subscribe", resource=resource)
            assert "tenantId" in reply["message"]
            await refused(drifter, "list", resource=resource)
        await refused(drifter, "get", resource="projects", id=project["id"])
        await refused(drifter, "insert", resource="projects", data={"name": "x"})
        await refused(drifter, "update", resource="projects", id=project["id"], data={"name": "x"})
        await refused(drifter, "delete", resource="projects", id=project["id"])
        assert await drifter.sync() == []


class Tenancy:
    """What each tenant owns, as the test expects it, and the users' sockets."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.owner: dict[str, str] = {}  # every id ever created -> its tenant
        self.live: dict[str, dict[str, dict]] = {r: {} for r in RESOURCES}  # resource -> id -> record
        self.expected: dict[str, list[tuple[str, str, str]]] = {t: [] for t in TENANTS}
        self.users: list[tuple[str, str, str, object]] = []  # (id, tenant, role, client)
        self.count = 0
        self.refusals = 0

    def spoof_filter(self, tenant: str) -> dict | None:
        others = [t for t in TENANTS if t != tenant]
        return self.rng.choice([
            None,
            {"tenantId": self.rng.choice(others)},
            {"tenantId": {"$in": list(TENANTS)}},
            {"tenantId": {"$ne": tenant}},
            {"tenantId": {"$exists": True}},
        ])

    def some_id(self, resource: str, tenant: str) -> str:
        """Mostly a live id of the user's own tenant; else another tenant's, a deleted one, or
        one that never existed."""
        own = [i for i in self.live[resource] if self.owner[i] == tenant]
        roll = self.rng.random()
        if own and roll < 0.6:
            return self.rng.choice(own)
        if roll < 0.9 and len(self.owner):
            return self.rng.choice(list(self.owner))
        return f"missing-{self.rng.randrange(1000)}"

    def check_record(self, tenant: str, record: dict, resource: str) -> None:
        assert self.owner.get(record["id"]) == tenant, f"{tenant} was given {resource} {record}"
        assert record["tenantId"] == tenant, record

    def wrote(self, tenant: str, resource: str, event: str, record: dict) -> None:
        self.expected[tenant].append((resource, event, record["id"]))
        if event == "delete":
            self.live[resource].pop(record["id"])
        else:
            self.live[resource][record["id"]] = record

    def data(self, resource: str, tenant: str) -> dict:
        self.count += 1
        data = {"name": f"{tenant} project {self.count}"} if resource == "projects" else {"title": f"{tenant} task {self.count}"}
        if self.rng.random() < 0.5:
            data["tenantId"] = self.rng.choice(TENANTS)
        if self.rng.random() < 0.2:
            data["createdBy"] = "someone-else"
        return data


async def one_operation(model: Tenancy) -> None:
    rng = model.rng
    user_id, tenant, role, client = rng.choice(model.users)
    kind = rng.choices(["insert", "update", "delete", "get", "list", "subscribe"], [5, 4, 2, 3, 3, 1])[0]
    resource = rng.choice(RESOURCES)
    live = model.live[resource]  # every tenant's live records

    if kind == "insert":
        data = model.data(resource, tenant)
        if resource == "tasks":
            data["projectId"] = model.some_id("projects", tenant)
            allowed = model.owner.get(data["projectId"]) == tenant and data["projectId"] in model.live["projects"]
        else:
            allowed = True
        if not allowed:
            model.refusals += 1
            await refused(client, "insert", resource=resource, data=data)
            return
        record = (await ok(client, "insert", resource=resource, data=data))["data"]
        assert (record["tenantId"], record["createdBy"]) == (tenant, user_id)
        model.owner[record["id"]] = tenant
        model.wrote(tenant, resource, "insert", record)

    elif kind == "update":
        id = model.some_id(resource, tenant)
        data = model.data(resource, tenant)
        allowed = id in live and model.owner[id] == tenant
        if resource == "tasks" and rng.random() < 0.3:
            data["projectId"] = model.some_id("projects", tenant)
            allowed = allowed and data["projectId"] in model.live["projects"] and model.owner[data["projectId"]] == tenant
        if not allowed:
            model.refusals += 1
            await refused(client, "update", resource=resource, id=id, data=data)
            return
        record = (await ok(client, "update", resource=resource, id=id, data=data))["data"]
        model.check_record(tenant, record, resource)
        assert record["createdBy"] == live[id]["createdBy"]
        model.wrote(tenant, resource, "update", record)

    elif kind == "delete":
        id = model.some_id(resource, tenant)
        if not (id in live and model.owner[id] == tenant and role == "admin"):
            model.refusals += 1
            await refused(client, "delete", resource=resource, id=id)
            return
        await ok(client, "delete", resource=resource, id=id)
        model.wrote(tenant, resource, "delete", live[id])

    elif kind == "get":
        id = model.some_id(resource, tenant)
        if not (id in live and model.owner[id] == tenant):
            model.refusals += 1
            await refused(client, "get", resource=resource, id=id)
            return
        record = (await ok(client, "get", resource=resource, id=id))["data"]
        model.check_record(tenant, record, resource)
        assert record == live[id]

    elif kind == "list":
        page = await ok(client, "list", resource=resource, filter=model.spoof_filter(tenant), limit=1000)
        for record in page["data"]:
            model.check_record(tenant, record, resource)
        assert {r["id"] for r in page["data"]} == {i for i in live if model.owner[i] == tenant}

    else:
        reply = await ok(client, "subscribe", resource=resource, filter=model.spoof_filter(tenant))
        assert reply["filter"]["tenantId"] == tenant


@pytest.mark.parametrize("seed", [5, 2024])
async def test_randomized_no_record_crosses_tenants(app, seed):
    db, plugin = app
    model = Tenancy(random.Random(seed))
    async with AsyncExitStack() as stack:
        for tenant in TENANTS:
            for role in ("admin", "user"):
                user_id = f"{tenant}-{role}"
                client = await stack.enter_async_context(login(plugin, user_id, tenant, role))
                model.users.append((user_id, tenant, role, client))
                # Everyone listens from the start, some with filters that try to widen the view.
                for resource in RESOURCES:
                    reply = await ok(client, "subscribe", resource=resource, filter=model.spoof_filter(tenant))
                    assert reply["filter"]["tenantId"] == tenant

        for _ in range(OPERATIONS):
            await one_operation(model)

        # The run exercised both sides: many writes that went through, many attempts refused.
        writes = sum(map(len, model.expected.values()))
        assert writes > OPERATIONS // 4 and model.refusals > OPERATIONS // 5, (writes, model.refusals)
        for user_id, tenant, _role, client in model.users:
            frames = await client.sync()
            assert all(f["type"] == "event" for f in frames), frames
            for frame in frames:
                model.check_record(tenant, frame["data"], frame["resource"])
            # Every change of the tenant, in order, once, and nothing else.
            assert [(f["resource"], f["event"], f["data"]["id"]) for f in frames] == model.expected[tenant], user_id

    # The store agrees with the model: nothing was moved across tenants behind the sockets' back.
    for resource in RESOURCES:
        stored = {r["id"]: r for r in await db.resources[resource].query()}
        assert stored == model.live[resource]


async def test_python_m_examples_multitenant_runs():
    async with running_example("multitenant", SECRET) as (url, _lines):
        async with connect(url, token=make_token(SECRET, "ada", tenantId="acme")) as ada:
            project = await ok(ada, "insert", resource="projects", data={"name": "P", "tenantId": "globex"})
            assert project["data"]["tenantId"] == "acme"
