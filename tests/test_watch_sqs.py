"""``s3db watch --feed sqs://...``: S3 Event Notifications through SQS, against moto's server
(a local emulator of S3 and SQS that sends bucket notifications to a queue), with real Redis.
AWS itself is not tested: what AWS adds (retention, redelivery after the visibility timeout,
events in any order) is handled as the feed documents but only exercised here as moto does it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_helpers import Collector, eventually
from test_watch import DEADLINE, WatchProcess, feeds_path, versions  # noqa: F401

from s3db_core import Database

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

ACCOUNT = "123456789012"


@pytest.fixture
def moto() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def client(kind: str, endpoint: str):
    return boto3.client(kind, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testkey", aws_secret_access_key="testsecret")  # fmt: skip


async def test_sqs_feed_delivers_foreign_writes_once_in_order(
    moto: str, redis_url: str, feeds_path: str, tmp_path: Path  # noqa: F811
) -> None:
    sqs, s3 = client("sqs", moto), client("s3", moto)
    queue = sqs.create_queue(QueueName="events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.create_bucket(Bucket="watched-bucket")
    s3.put_bucket_notification_configuration(Bucket="watched-bucket", NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn,
                                 "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})  # fmt: skip
    host = moto.partition("://")[2]
    store = f"http://testkey:testsecret@{host}/watched-bucket/app"
    broker = f"{redis_url}?prefix=q{uuid.uuid4().hex[:10]}"
    feed = f"sqs://{host}/{ACCOUNT}/events?http=1&wait=1&region=us-east-1"
    server = Database(store, broker=broker)
    seen = Collector()
    await server.use_plugin(seen)
    await server.connect()
    await server.create_resource("notes", {"text": "string|required"})
    foreign = Database(store)
    await foreign.connect()
    watcher = WatchProcess(store, broker, feed, tmp_path / "state.json", feeds_path)
    watcher.env.update(AWS_ACCESS_KEY_ID="testkey", AWS_SECRET_ACCESS_KEY="testsecret")
    watcher.start()
    try:
        await watcher.wait_started()
        notes = foreign.resources.notes
        a = await notes.insert({"text": "a1"})
        await eventually(lambda: versions(seen, a["id"]) == [("insert", 1)], "insert", DEADLINE)
        await notes.update(a["id"], {"text": "a2"})
        await eventually(lambda: len(versions(seen, a["id"])) == 2, "update", DEADLINE)
        await notes.delete(a["id"])
        await eventually(lambda: len(versions(seen, a["id"])) == 3, "delete", DEADLINE)
        assert versions(seen, a["id"]) == [("insert", 1), ("update", 2), ("delete", 2)]
        mine = await server.resources.notes.insert({"text": "own"})
        marker = await notes.insert({"text": "marker"})
        await eventually(lambda: len(versions(seen, marker["id"])) == 1, "marker", DEADLINE)
        await asyncio.sleep(1.0)
        assert versions(seen, mine["id"]) == [("insert", 1)]  # not doubled
        # Handled messages were deleted from the queue.
        left = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])
        assert left["Attributes"]["ApproximateNumberOfMessages"] == "0"
        assert watcher.stop() == 0
        assert b"testsecret" not in watcher.log.read_bytes()
    finally:
        if watcher.process is not None and watcher.process.poll() is None:
            watcher.kill()
        await foreign.disconnect()
        await server.disconnect()
