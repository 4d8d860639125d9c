"""The Database: a store connection, its resources, and its own plugin manager."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pluggy

from . import hookspecs
from .brokers import Broker, load_broker
from .cache import CacheOptions, RecordCache
from .change import Change
from .compat import IncompatibleSchemaError, incompatible_changes
from .errors import ConflictError, StorageError, UnsupportedStoreError
from .limits import DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_SIZE, Limits
from .log import get_logger
from .options import number_in
from .plugins import await_me_maybe, call_each_isolated
from .resource import Resource, Stats

if TYPE_CHECKING:
    from .repair import RepairProgress, RepairReport
from .storage import ObjectNotFound, StorageClient, open_storage
from .storage.base import PreconditionFailed

log = get_logger("s3db.core")

_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
METADATA_KEY = "s3db.json"
METADATA_WRITE_ATTEMPTS = 20  # writers of s3db.json racing each other (defining at start-up)
# What s3db.js (the JavaScript library) writes in s3db.json and this version never does.
_S3DB_JS_FIELDS = ("s3dbVersion", "schemaRegistry")
_S3DB_JS_RESOURCE_FIELDS = ("versions", "currentVersion")


def _written_by_s3db_js(document: dict[str, Any]) -> str:
    """What shows that s3db.js wrote this ``s3db.json`` (for the message), or ""."""
    if "s3dbVersion" in document:
        return f"s3dbVersion {str(document['s3dbVersion'])[:40]!r}"
    for field in _S3DB_JS_FIELDS:
        if field in document:
            return f"it has {field!r}"
    resources = document.get("resources")
    if isinstance(resources, dict):
        for name, entry in resources.items():
            if isinstance(entry, dict):
                for field in _S3DB_JS_RESOURCE_FIELDS:
                    if field in entry:
                        return f"resource {str(name)[:64]!r} has {field!r}"
    return ""


def _same_definition(saved: Any, definition: dict[str, Any]) -> bool:
    """Whether the recorded entry already says ``definition`` (fields of the entry this version
    does not know are not part of the comparison: they are kept, not compared)."""
    return isinstance(saved, dict) and all(saved.get(k) == v for k, v in definition.items())


def _resource_from_definition(db: Database, name: Any, definition: Any) -> Resource:
    """The resource an entry of ``s3db.json`` describes; ValueError if it cannot be read."""
    if not isinstance(name, str) or not _RESOURCE_NAME.match(name):
        raise ValueError(f"invalid resource name {str(name)[:64]!r}")
    if not isinstance(definition, dict) or not isinstance(definition.get("attributes"), dict):
        raise ValueError(f"resource {name!r}: no 'attributes' object")
    partitions = definition.get("partitions")
    behavior = definition.get("behavior", "body-overflow")
    if partitions is not None and not isinstance(partitions, dict):
        raise ValueError(f"resource {name!r}: 'partitions' is not an object")
    return Resource(
        db,
        name,
        definition["attributes"],
        timestamps=definition.get("timestamps") is True,
        partitions=partitions,
        behavior=behavior if isinstance(behavior, str) else "",
    )


class Resources:
    """Resources by name, with attribute access (``db.resources.chat_messages``)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Resource] = {}

    def __getattr__(self, name: str) -> Resource:
        try:
            return self.__dict__["_by_name"][name]
        except KeyError:
            raise AttributeError(
                f"no resource named {name!r}: it is neither recorded in the store's s3db.json "
                "nor defined in this process (define it with create_resource)"
            ) from None

    def __getitem__(self, name: str) -> Resource:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Resource | None:
        return self._by_name.get(name)

    def items(self):
        return self._by_name.items()

    def _add(self, resource: Resource) -> None:
        self._by_name[resource.name] = resource


class Database:
    """A document database on an object store.

    ``Database("memory://demo")``, ``file://./data``, ``s3://KEY:SECRET@bucket/prefix?region=..``
    or ``http(s)://KEY:SECRET@host:port/bucket/prefix``.

    ``broker`` says where changes go: ``"local"`` (this process only), or a shared
    ``"redis://host:port/db"`` / ``"nats://host:port"`` so every process on it (servers and plain
    writer scripts) sees every change; options in the URL's query or in ``broker_config``.

    ``cache={"max_bytes": ..., "lists": True, "max_stale": ...}`` turns on the record cache kept
    exact by the change stream (``s3db_core.cache``; ``docs/cache.md``).
    """

    def __init__(
        self,
        connection_string: str = "memory://",
        *,
        broker: str = "local",
        broker_config: dict[str, Any] | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
        cache: dict[str, Any] | bool | None = None,
    ) -> None:
        self.connection_string = connection_string
        # Input limits every write is checked against before any store request.
        self.limits = Limits(max_depth, max_record_size)
        # Counters of trouble met while serving (e.g. damaged records skipped by listings).
        self.stats = Stats()
        self.storage: StorageClient = open_storage(connection_string)
        self.resources = Resources()
        self.pm = pluggy.PluginManager("s3db")
        self.pm.add_hookspecs(hookspecs)
        self.broker: Broker = load_broker(broker, broker_config)
        # The record cache (off by default; see s3db_core.cache): it hears every change first,
        # so a plugin's s3db_change that reads the record sees it.
        self.cache: RecordCache | None = None
        if cache is not None and cache is not False:
            self.cache = RecordCache(self, CacheOptions.parse(cache, connection_string, broker))
            self.stats.cache_on = True
            self.broker.subscribe(self.cache.on_change)
        self.broker.subscribe(self._dispatch_change)
        self.connected = False
        self._saved_definitions: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<Database {self.storage.describe()}>"

    # -- lifecycle --------------------------------------------------------------------------
    async def connect(self) -> Database:
        """Open the store, read the database metadata (``s3db.json``: the resources it records
        become ``db.resources``), and start every registered plugin (again after a
        ``disconnect``: a database may be connected, disconnected and connected again).

        A store whose ``s3db.json`` another program wrote (s3db.js) is refused with
        ``UnsupportedStoreError`` before anything is written."""
        if self.connected:
            return self
        self.pm.check_pending()
        await self.storage.connect()
        try:
            document, _etag = await self._read_metadata()
            self._saved_definitions = document["resources"]
            self._load_definitions()
        except BaseException:
            await self.storage.close()
            raise
        await self.broker.start()
        if self.cache is not None:
            await self.cache.start()
        self.connected = True
        await self._call_hook("s3db_startup", db=self)
        log.debug("connected", store=self.storage.describe())
        return self

    async def _read_metadata(self) -> tuple[dict[str, Any], str | None]:
        """``s3db.json`` as a dict (every field kept, ``resources`` always a dict) and its ETag
        (None when there is none yet). Refuses a file another program wrote."""
        try:
            obj = await self.storage.get(METADATA_KEY)
        except ObjectNotFound:
            return {"version": 1, "resources": {}}, None
        where = f"{self.storage.describe()}: {METADATA_KEY}"
        try:
            document = orjson.loads(obj.body)
        except orjson.JSONDecodeError as exc:
            raise StorageError(f"{where} is not valid JSON") from exc
        if not isinstance(document, dict):
            raise StorageError(f"{where} is not a JSON object")
        foreign = _written_by_s3db_js(document)
        if foreign:
            raise UnsupportedStoreError(
                f"{where} was written by s3db.js ({foreign}); stores written by s3db.js are not "
                "supported yet (their definitions would be lost): use another bucket or prefix "
                "for this database"
            )
        resources = document.setdefault("resources", {})
        if not isinstance(resources, dict):
            raise StorageError(f"{where}: 'resources' is not a JSON object")
        return document, obj.etag

    async def reload_definitions(self) -> None:
        """Read ``s3db.json`` again and make every resource it records reachable (what ``connect``
        does): for a process that learns another one changed the definitions (``s3db watch``).
        Raises ``S3dbError`` when the file cannot be read."""
        document, _ = await self._read_metadata()
        self._saved_definitions = document["resources"]
        self._load_definitions()

    def _load_definitions(self) -> None:
        """Make every resource recorded in ``s3db.json`` reachable as ``db.resources.<name>``.
        A resource already defined in this process (connected again) keeps its object; a
        recorded definition this version cannot read is skipped with a warning (define it with
        ``create_resource``), never rewritten."""
        for name, definition in self._saved_definitions.items():
            if name in self.resources:
                continue
            try:
                self.resources._add(_resource_from_definition(self, name, definition))
            except Exception as exc:
                log.warning("saved_definition_skipped", resource=str(name)[:200], error=str(exc))

    async def disconnect(self) -> None:
        """Stop plugins (they may still read the store), then close the store."""
        if not self.connected:
            return
        try:
            await self._call_hook("s3db_shutdown", db=self)
        finally:
            self.connected = False
            if self.cache is not None:
                await self.cache.stop()
            try:
                await self.broker.close()
            finally:
                await self.storage.close()

    async def __aenter__(self) -> Database:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    # -- resources --------------------------------------------------------------------------
    async def create_resource(
        self,
        name: str,
        attributes: dict[str, Any],
        *,
        timestamps: bool = False,
        partitions: dict[str, Any] | None = None,
        behavior: str = "body-overflow",
        migrate: bool = False,
    ) -> Resource:
        """Define (or redefine) a resource and record its definition in ``s3db.json``.

        Redefining a resource that holds records in a way they no longer fit (a type change, a
        new required field without default, a partition change: see ``compat.py``) raises
        ``IncompatibleSchemaError`` unless ``migrate=True``."""
        if not isinstance(name, str) or not _RESOURCE_NAME.match(name):
            raise ValueError(f"invalid resource name {name!r}: use letters, digits, '_', '-' or '.'")
        resource = Resource(
            self, name, attributes, timestamps=timestamps, partitions=partitions, behavior=behavior
        )
        definition = resource.definition()
        saved = self._saved_definitions.get(name)
        if not _same_definition(saved, definition):
            await self._save_definition(resource, definition, migrate)
        self.resources._add(resource)
        await self._call_hook("s3db_resource_created", db=self, resource=resource)
        return resource

    async def _save_definition(
        self, resource: Resource, definition: dict[str, Any], migrate: bool
    ) -> None:
        """Record ``definition`` in ``s3db.json``: read the file as it is now, change this one
        resource's entry (keeping every field this version does not know, in the file and in
        the entry), and write it back only if nobody wrote it meanwhile (If-Match), else again.
        Another process's definitions are never lost to a stale copy."""
        name = resource.name
        for _attempt in range(METADATA_WRITE_ATTEMPTS):
            document, etag = await self._read_metadata()
            resources: dict[str, Any] = document["resources"]
            saved = resources.get(name)
            if _same_definition(saved, definition):
                self._saved_definitions = resources
                return
            if isinstance(saved, dict) and not migrate:
                changes = incompatible_changes(saved, definition)
                if changes and (await self.storage.list(resource.layout.data_prefix, max_keys=1)).keys:
                    raise IncompatibleSchemaError(name, changes)
            resources[name] = {**saved, **definition} if isinstance(saved, dict) else definition
            document.setdefault("version", 1)
            body = orjson.dumps(document)
            try:
                if etag is None:
                    await self.storage.put(METADATA_KEY, body, {}, if_none_match=True,
                                           content_type="application/json")  # fmt: skip
                else:
                    await self.storage.put(METADATA_KEY, body, {}, if_match=etag,
                                           content_type="application/json")  # fmt: skip
            except PreconditionFailed:
                continue  # another process wrote s3db.json meanwhile: merge into its version
            self._saved_definitions = resources
            self._load_definitions()  # resources other processes recorded since connect
            return
        raise ConflictError(f"{METADATA_KEY} kept changing while resource {name!r} was saved")

    async def repair(
        self,
        *,
        grace: float = 120.0,
        dry_run: bool = False,
        progress: Callable[[RepairProgress], Any] | None = None,
    ) -> RepairReport:
        """Find and fix damage in the store (records missing from partition listings, stale
        partition references, temp files of killed writers) and report it, damaged records
        included. References and temp files younger than ``grace`` seconds are left alone (a
        write may be in flight). ``progress(RepairProgress)`` is called as it goes (keys read,
        what was found so far). See ``s3db_core.repair``."""
        from .repair import MAX_GRACE, repair

        # A NaN or negative grace would make every write in flight look stale.
        grace = number_in("grace", grace, 0, MAX_GRACE)
        return await repair(self, grace=grace, dry_run=dry_run, progress=progress)

    # -- plugins ----------------------------------------------------------------------------
    async def use_plugin(self, plugin: object, name: str | None = None) -> object:
        """Register ``plugin`` (an object or module with hookimpls); start it if connected."""
        self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()
        except Exception:
            self.pm.unregister(plugin)
            raise
        if self.connected:  # the others started at connect: start this one alone
            others = [p for p in self.pm.get_plugins() if p is not plugin]
            start = self.pm.subset_hook_caller("s3db_startup", remove_plugins=others)
            for result in start(db=self):
                await await_me_maybe(result)
        return plugin

    async def _call_hook(self, hook: str, **kwargs: Any) -> list[Any]:
        caller = getattr(self.pm.hook, hook)
        if not caller.get_hookimpls():  # nothing registered: skip pluggy's call machinery
            return []
        results = caller(**kwargs)
        return [await await_me_maybe(r) for r in results]

    async def _publish(self, change: Change) -> Change:
        """Hand a durable change to the broker (never raises: the write already happened)."""
        if self.cache is not None:  # the writer reads its own write, whatever the broker does
            self.cache.apply_own(change)
        return await self.broker.publish(change)

    async def _dispatch_change(self, change: Change) -> None:
        """Each ``s3db_change`` implementation on its own: one that raises is logged and the
        others still run (the write is durable; nothing may fail it now)."""
        await call_each_isolated(self.pm.hook.s3db_change, change=change)
