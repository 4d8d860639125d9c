"""A first look at s3db: resources, inserts, a partitioned query and change hooks on memory://.

Run it with ``make demo`` or ``python -m examples.quickstart``.
"""

from __future__ import annotations

import asyncio

from s3db_core import Database, hookimpl


class PrintChanges:
    """A tiny plugin: prints every durable change, the way the WebSocket plugin would stream it."""

    @hookimpl
    def s3db_change(self, change):
        print(f"  change: {change.event} {change.resource} {change.record['id']}")


async def main() -> None:
    db = Database("memory://quickstart")
    await db.use_plugin(PrintChanges())
    await db.connect()
    print(f"connected to {db.storage.describe()}")
    messages = await db.create_resource(
        name="chat_messages",
        attributes={
            "roomId": "string|required",
            "username": "string|required",
            "content": "string|required|maxlength:4000",
            "type": "string|default:text",
        },
        timestamps=True,
        partitions={"byRoom": {"fields": {"roomId": "string"}}},
    )
    for room, user, text in [("lobby", "ada", "hello"), ("lobby", "bob", "hi ada"), ("dev", "ada", "ship it")]:
        await messages.insert({"roomId": room, "username": user, "content": text})
    page = await messages.list(filter={"roomId": "lobby"}, limit=50)
    print(f"lobby has {len(page.items)} messages:")
    for msg in page.items:
        print(f"  {msg['createdAt']} {msg['username']}: {msg['content']}")
    first = page.items[0]
    await messages.update(first["id"], {"content": "hello, world"})
    print(f"store requests so far: {db.storage.requests.snapshot()}")
    await db.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
