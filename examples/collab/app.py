"""The seed's collaborative editing: documents, their operation log, and live cursors.

Resources, events and protected fields follow the "Collaborative Editing" section of the seed;
the ``documents`` resource and the shape of an operation, which the seed leaves out, are filled
in here (README.md lists every choice):

* ``documents`` broadcast only updates and never send ``content`` to any client (protected).
  Owners and collaborators read a document and subscribe to it by the seed's
  ``{"documentId": ...}`` (or ``{"id": ...}``); only the owner changes its collaborators or
  deletes it.
* ``document_operations`` is the append-only edit log: ``insert`` ``text`` at ``position`` or
  ``delete`` ``length`` characters at ``position``. The server folds each operation into the
  document's stored ``content`` in commit order (``OperationLog``), bumps its ``version`` and
  stamps the operation with the version it produced, so every client that applies operations in
  version order ends with the server's text.
* ``cursors`` show where each collaborator is; only the cursor's own user moves or removes it
  (the seed's ``ctx.userId`` is the stored record's ``userId``: ``ctx.record``).

Subscribing to, listing or reading operations and cursors needs a ``documentId`` the user may
access; without one the guard refuses.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from examples.common import Options, every, find_record, start_app
from examples.pages import example_page
from s3db_core import Change, Database, ForbiddenError, NotFoundError, ValidationError, hookimpl
from s3db_ws_plugin import RecheckOnAccessChange, WebSocketPlugin

log = structlog.get_logger("s3db.examples.collab")

CURSOR_TTL = 60.0  # seconds a cursor lives without moving (its user closed the tab)
CURSOR_SWEEP_EVERY = 15.0  # seconds between sweeps of idle cursors
SERVER_FIELDS = ("content", "version", "lastEditedBy")  # documents fields only the server writes
Job = Callable[[], Awaitable[None]]


async def define_resources(db: Database) -> None:
    await db.create_resource(
        "documents",
        {
            "title": "string|required|minlength:1|maxlength:200",
            "content": "string|default:",  # protected: never sent to a client
            "ownerId": "string|required",
            "collaborators": "array|items:string|default:[]",
            "version": "number|integer|min:0|default:0",
            "lastEditedBy": "string|optional",
        },
        timestamps=True,
    )
    await db.create_resource(
        "document_operations",
        {
            "documentId": "string|required",
            "userId": "string|required",
            "type": "string|required|enum:insert,delete",
            "position": "number|required|integer|min:0",
            "text": "string|optional|minlength:1|maxlength:10000",
            "length": "number|optional|integer|min:1",
            "timestamp": "number|required",
            "version": "number|optional|integer|min:1",  # stamped by the server once applied
        },
        timestamps=True,
        partitions={"byDocument": {"fields": {"documentId": "string"}}},
    )
    await db.create_resource(
        "cursors",
        {
            "documentId": "string|required",
            "userId": "string|required",
            "username": "string|required",
            "position": "number|required|integer|min:0",
            "selectionEnd": "number|optional|integer|min:0",
        },
        timestamps=True,
        partitions={"byDocument": {"fields": {"documentId": "string"}}},
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def can_access(doc: dict[str, Any] | None, user: Any) -> bool:
    """The seed's check: the owner or a collaborator (a missing document is nobody's)."""
    if doc is None or user is None:
        return False
    return doc["ownerId"] == user.id or user.id in doc["collaborators"]


def apply_operation(text: str, op: dict[str, Any]) -> str:
    """``text`` after ``op``; positions past the end are clamped to it."""
    position = min(op["position"], len(text))
    if op["type"] == "insert":
        return text[:position] + op["text"] + text[position:]
    return text[:position] + text[position + op["length"] :]


def check_operation(data: dict[str, Any]) -> None:
    """An insert carries ``text`` and no ``length``; a delete the reverse (ValidationError).

    The schema checks the rest (``type`` is one of the two, positions are integers...).
    """
    kind = data.get("type")
    if kind not in ("insert", "delete"):
        return
    needs, forbids = ("text", "length") if kind == "insert" else ("length", "text")
    errors = []
    if data.get(needs) is None:
        errors.append({"field": needs, "rule": "required", "message": f"an {kind} needs {needs!r}"})
    if data.get(forbids) is not None:
        errors.append({"field": forbids, "rule": "forbidden", "message": f"an {kind} has no {forbids!r}"})
    if errors:
        raise ValidationError(errors)


def resources_config(db: Database) -> dict[str, Any]:
    """The plugin's ``resources`` option: what each resource broadcasts and who may do what."""
    documents = db.resources.documents

    async def document_in(filter: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
        """The ``documentId`` a subscribe/list filter names, and that document."""
        doc_id = (filter or {}).get("documentId")
        if not isinstance(doc_id, str):
            raise ForbiddenError("name one document: filter {'documentId': <document id>}")
        return doc_id, await find_record(documents, doc_id)

    async def one_document(user: Any, filter: dict[str, Any] | None) -> dict[str, Any] | bool:
        # Operations and cursors are readable per document, by its owner and collaborators.
        doc_id, doc = await document_in(filter)
        return {"documentId": doc_id} if can_access(doc, user) else False

    async def in_accessible_document(user: Any, ctx: Any) -> bool:
        return ctx.record is not None and can_access(
            await find_record(documents, ctx.record["documentId"]), user
        )

    # -- documents ---------------------------------------------------------------------------
    async def document_subscribe(user: Any, filter: dict[str, Any]) -> dict[str, Any] | bool:
        # The seed's `filter.documentId` names the document; {"id": ...} does too. Either way
        # the subscription is to that document's own id (the seed's key is dropped).
        doc_id = filter.pop("documentId", filter.get("id"))
        if not isinstance(doc_id, str) or filter.get("id", doc_id) != doc_id:
            raise ForbiddenError("subscribe to one document: filter {'documentId': <document id>}")
        return {"id": doc_id} if can_access(await find_record(documents, doc_id), user) else False

    def document_list(user: Any, ctx: Any) -> dict[str, Any]:
        # Owned documents on request, otherwise the ones shared with the user.
        if (ctx.filter or {}).get("ownerId") == user.id:
            return {"ownerId": user.id}
        return {"collaborators[]": user.id}

    def document_create(user: Any, data: dict[str, Any]) -> bool:
        data["ownerId"] = user.id
        # The text is built only from operations, so that every collaborator can rebuild it.
        for field in SERVER_FIELDS:
            data.pop(field, None)
        return True

    def document_update(user: Any, ctx: Any) -> bool:
        doc = ctx.record
        if not can_access(doc, user):
            return False
        touched = [f for f in SERVER_FIELDS if f in ctx.data]
        if touched:
            raise ForbiddenError(f"{touched[0]!r} is kept by the server: edit through document_operations")
        if ctx.data.get("ownerId", doc["ownerId"]) != doc["ownerId"]:
            raise ForbiddenError("the owner of a document cannot be changed")
        if "collaborators" in ctx.data and user.id != doc["ownerId"]:
            raise ForbiddenError("only the owner changes the collaborators")
        return True

    def document_delete(user: Any, ctx: Any) -> bool:
        return ctx.record is not None and ctx.record["ownerId"] == user.id

    # -- document_operations -----------------------------------------------------------------
    async def operation_create(user: Any, data: dict[str, Any]) -> bool:
        doc = await find_record(documents, data.get("documentId"))
        if not can_access(doc, user):
            return False
        check_operation(data)
        data["userId"] = user.id
        data["timestamp"] = now_ms()
        data.pop("version", None)
        return True

    # -- cursors -----------------------------------------------------------------------------
    async def cursor_create(user: Any, data: dict[str, Any]) -> bool:
        if not can_access(await find_record(documents, data.get("documentId")), user):
            return False
        data["userId"] = user.id
        data["username"] = user.name or user.id
        return True

    def own_cursor(user: Any, ctx: Any) -> bool:
        # The seed's `ctx.userId === user.id`, on the stored record.
        return ctx.record is not None and ctx.record["userId"] == user.id

    def cursor_update(user: Any, ctx: Any) -> bool:
        if not own_cursor(user, ctx):
            return False
        for field in ("documentId", "userId", "username"):
            ctx.data.pop(field, None)  # a cursor moves; it never changes hands or documents
        return True

    return {
        "documents": {
            "events": ["update"],
            "protected": ["content"],  # don't broadcast full content
            # Who may see a document at all, checked on every record that leaves the server:
            # the change that removes a collaborator reaches them as `leave`, never its content.
            "read": {"$or": [{"ownerId": "$user.id"}, {"collaborators[]": "$user.id"}]},
            "guard": {
                "subscribe": document_subscribe,
                "list": document_list,
                "get": lambda user, ctx: can_access(ctx.record, user),
                "create": document_create,
                "update": document_update,
                "delete": document_delete,
            },
        },
        "document_operations": {
            "events": ["insert"],
            "guard": {
                "subscribe": one_document,
                "list": lambda user, ctx: one_document(user, ctx.filter),
                "get": in_accessible_document,
                "create": operation_create,
                "update": lambda user, ctx: False,  # the log is append-only
                "delete": lambda user, ctx: False,
            },
        },
        "cursors": {
            "events": ["insert", "update", "delete"],
            "guard": {
                "subscribe": one_document,
                "list": lambda user, ctx: one_document(user, ctx.filter),
                "get": in_accessible_document,
                "create": cursor_create,
                "update": cursor_update,
                "delete": own_cursor,
            },
        },
    }


class OperationLog:
    """Folds each new operation into its document's ``content``, one at a time per document.

    Runs after the operation is durable (``s3db_change``), in commit order: the document's
    ``version`` goes up by one (an ``update`` event to its subscribers, without the content) and
    the operation is stamped with that version, the order in which to replay the log. Deleting
    a document deletes its operations and cursors.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @hookimpl
    async def s3db_change(self, change: Change) -> None:
        try:
            if change.resource == "document_operations" and change.event == "insert":
                await self.apply(change.record)
            elif change.resource == "documents" and change.event == "delete":
                await self.forget(change.record["id"])
        except Exception:  # the write is stored either way; never fail its writer
            log.exception("could not follow up a change", resource=change.resource, id=change.record["id"])

    async def apply(self, op: dict[str, Any]) -> None:
        documents = self.db.resources.documents
        doc_id = op["documentId"]
        lock = self._locks.get(doc_id)
        if lock is None:
            lock = self._locks[doc_id] = asyncio.Lock()
        async with lock:
            found = await documents.get_versioned(doc_id)
            if found is None:
                return  # the document was deleted meanwhile
            doc = found[0]
            version = doc["version"] + 1
            patch = {
                "content": apply_operation(doc["content"], op),
                "version": version,
                "lastEditedBy": op["userId"],
            }
            await documents.update(doc_id, patch, current=found)
        await self.db.resources.document_operations.update(op["id"], {"version": version})

    async def forget(self, doc_id: str) -> None:
        """A deleted document takes its operations and cursors with it."""
        for name in ("cursors", "document_operations"):
            resource = self.db.resources[name]
            for record in await resource.query({"documentId": doc_id}):
                try:
                    await resource.delete(record["id"])
                except NotFoundError:
                    continue


DOCUMENT_CHANNELS = "doc:*"  # one channel per document: doc:<documentId>


def channels_config(db: Database) -> dict[str, Any]:
    """The plugin's ``channels`` option: ``doc:<documentId>`` carries presence and ``cursor``
    events (the page's live cursors, never stored); only the document's owner and collaborators
    join it (anyone else, or a document that does not exist: ``FORBIDDEN``)."""

    async def may_join(user: Any, ctx: Any) -> bool:
        document_id = ctx.channel.split(":", 1)[1]
        return can_access(await find_record(db.resources.documents, document_id), user)

    return {DOCUMENT_CHANNELS: {"join": may_join, "presence": True, "events": ["cursor"]}}


async def remove_idle_cursors(db: Database, max_age: float = CURSOR_TTL) -> int:
    """Delete cursors that have not moved for ``max_age`` seconds (a ``delete`` event each)."""
    cursors = db.resources.cursors
    cutoff = (datetime.now(UTC) - timedelta(seconds=max_age)).isoformat(timespec="milliseconds")
    removed = 0
    for cursor in await cursors.query({"updatedAt": {"$lte": cutoff.replace("+00:00", "Z")}}):
        try:
            await cursors.delete(cursor["id"])
        except NotFoundError:  # its user removed it meanwhile
            continue
        removed += 1
    return removed


async def create_app(options: Options) -> tuple[Database, WebSocketPlugin, list[Job]]:
    """Connect the database, define the resources and serve them on ``options.port``.

    Returns the database, the running plugin and the background jobs (the idle-cursor sweep).
    """

    async def make_plugin(db: Database) -> WebSocketPlugin:
        return WebSocketPlugin(
            port=options.port,
            host=options.host,
            auth={"required": True, "drivers": [{"driver": "jwt", "config": {"secret": options.jwt_secret}}]},
            resources=resources_config(db),
            channels=channels_config(db),
            routes=example_page(__file__, options),
        )

    # A collaborator removed from a document stops receiving it, its operations and cursors.
    def access(db: Database, plugin: WebSocketPlugin) -> list[object]:
        fields = ("ownerId", "collaborators")
        dependents = {"documents": "id", "document_operations": "documentId", "cursors": "documentId"}
        return [RecheckOnAccessChange(plugin, "documents", fields, dependents)]

    db, plugin = await start_app(
        options, define_resources, make_plugin, before=lambda db: [OperationLog(db)], after=access
    )

    async def sweep() -> None:
        await remove_idle_cursors(db)

    return db, plugin, [every(CURSOR_SWEEP_EVERY, sweep)]
