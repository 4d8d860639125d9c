"""Post a system message to a chat room from a plain script: no server, just the store and the
broker the servers share, so every server process delivers it to the room's subscribers.

    python -m examples.chat.announce --db file://./data/chat --broker redis://127.0.0.1:6379/0 \\
        --room general "The office closes at 6 pm today"
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from examples.chat.app import define_resources
from s3db_core import Database


async def announce(db_url: str, broker: str, room_name: str, text: str) -> int:
    db = Database(db_url, broker=broker)
    await db.connect()
    try:
        await define_resources(db)
        rooms = await db.resources.chat_rooms.query({"name": room_name})
        if not rooms:
            print(f"no room named {room_name!r}", file=sys.stderr)
            return 1
        await db.resources.chat_messages.insert(
            {
                "roomId": rooms[0]["id"],
                "userId": "system",
                "username": "system",
                "content": text,
                "type": "system",
            }
        )
        return 0
    finally:
        await db.disconnect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.chat.announce", description=__doc__)
    parser.add_argument("--db", required=True, help="the chat servers' connection string")
    parser.add_argument("--broker", required=True, help="the chat servers' broker URL")
    parser.add_argument("--room", default="general", help="room name (default general)")
    parser.add_argument("text", help="the message")
    args = parser.parse_args(argv)
    return asyncio.run(announce(args.db, args.broker, args.room, args.text))


if __name__ == "__main__":
    sys.exit(main())
