"""What the keys a `subscribe` guard returns mean for live events, as documented.

Every key the guard returns is access, including keys it copied from the client's filter
(`{**filter, "userId": user.id}`): a record that leaves any of them gives `leave {id}` and
nothing of the new record. A guard that returns only the keys it imposes leaves the client's
keys as its selection: a record that leaves only those arrives as one last `update`. A record
that enters what a subscriber sees arrives as `update`.
"""

from __future__ import annotations

import json

from ws_helpers import JWT_AUTH, connect, make_token, serve


async def notifications(db):
    for name in ("copied", "imposed"):
        await db.create_resource(
            name, {"userId": "string|required", "text": "string|required", "read": "boolean"}
        )


RESOURCES = {
    "copied": {"guard": {"subscribe": lambda user, filter: {**filter, "userId": user.id}}},
    "imposed": {"guard": {"subscribe": lambda user, filter: {"userId": user.id}}},
}


async def test_copied_keys_are_access_and_imposed_keys_leave_the_clients_as_selection():
    async with serve(notifications, resources=RESOURCES, auth=JWT_AUTH) as (db, plugin):
        made = {}
        for name in RESOURCES:
            made[name] = await db.resources[name].insert(
                {"userId": "ann", "text": "hello", "read": False}
            )
        async with connect(plugin.url, token=make_token("ann")) as ann:
            for name in RESOURCES:
                reply = await ann.call("subscribe", resource=name, filter={"read": False})
                # The effective filter is the same; only what counts as access differs.
                assert reply["filter"] == {"read": False, "userId": "ann"}, reply
            for name in RESOURCES:
                await db.resources[name].update(made[name]["id"], {"read": True, "text": "seen"})
            frames = await ann.events()
            by_resource = {f["resource"]: (f["event"], f["data"]) for f in frames}
            assert len(frames) == 2, frames
            # Copied into the guard's answer, `read` is access: leave, with the id only.
            assert by_resource["copied"] == ("leave", {"id": made["copied"]["id"]})
            assert "seen" not in json.dumps([f for f in frames if f["resource"] == "copied"])
            # Left to the client, `read` is its selection: one last update with the new values.
            event, data = by_resource["imposed"]
            assert (event, data["read"], data["text"]) == ("update", True, "seen")

            # A record entering what ann sees arrives as an update, not an insert.
            await db.resources["imposed"].update(made["imposed"]["id"], {"read": False})
            [entered] = await ann.events()
            assert (entered["event"], entered["data"]["read"]) == ("update", False)

            # Nothing of another user's notification, whatever ann's filter said.
            other = await db.resources["imposed"].insert(
                {"userId": "bo", "text": "x", "read": False}
            )
            await db.resources["imposed"].update(other["id"], {"text": "y"})
            assert await ann.events() == []
