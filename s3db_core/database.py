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
from .errors import StorageError
from .limits import DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_SIZE, Limits
from .log import get_logger
from .plugins import await_me_maybe, call_each_isolated
from .resource import Resource, Stats

if TYPE_CHECKING:
    from .repair import RepairProgress, RepairReport
from .storage import ObjectNotFound, StorageClient, open_storage

log = get_logger("s3db.core")

_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
METADATA_KEY = "s3db.json"


class Resources:
    """Resources by name, with attribute access (``db.resources.chat_messages``)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Resource] = {}

    def __getattr__(self, name: str) -> Resource:
        try:
            return self.__dict__["_by_name"][name]
        except KeyError:
            raise AttributeError(f"no resource named {name!r}") from None

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
        """Open the store, read the database metadata, and start every registered plugin."""
        if self.connected:
            return self
        self.pm.check_pending()
        await self.storage.connect()
        try:
            obj = await self.storage.get(METADATA_KEY)
            self._saved_definitions = orjson.loads(obj.body).get("resources", {})
        except ObjectNotFound:
            self._saved_definitions = {}
        except orjson.JSONDecodeError as exc:
            raise StorageError(f"{self.storage.describe()}: {METADATA_KEY} is not valid JSON") from exc
        await self.broker.start()
        if self.cache is not None:
            await self.cache.start()
        self.connected = True
        await self._call_hook("s3db_startup", db=self)
        log.debug("connected", store=self.storage.describe())
        return self

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
        if saved is not None and saved != definition and not migrate:
            changes = incompatible_changes(saved, definition)
            if changes and (await self.storage.list(resource._data_prefix, max_keys=1)).keys:
                raise IncompatibleSchemaError(name, changes)
        self.resources._add(resource)
        if saved != definition:
            self._saved_definitions[name] = definition
            body = orjson.dumps({"version": 1, "resources": self._saved_definitions})
            await self.storage.put(METADATA_KEY, body, {}, content_type="application/json")
        await self._call_hook("s3db_resource_created", db=self, resource=resource)
        return resource

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
        from .repair import repair

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
