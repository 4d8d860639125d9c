"""A real S3 server for tests: SeaweedFS ``weed mini`` on free loopback ports (see S3-SERVER.md).

``start_s3_server()`` starts it in a temp dir, waits until it serves, creates one bucket and
returns an ``S3Server``; ``S3Server.stop()`` ends that process by its PID and removes the dir.
``S3Server.kill()`` SIGKILLs a server started here (its data dir stays) and ``S3Server.restart()``
starts it again on the same ports and data, for crash tests: give those a server of their own.
``S3Server.from_url()`` wraps an already running server (``S3DB_TEST_S3_URL``) instead.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import boto3
from botocore.config import Config

WEED = Path(sys.executable).parent / "weed"
GRPC_OFFSET = 10000  # SeaweedFS serves gRPC on every HTTP port + 10000


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    access: str
    secret: str
    process: subprocess.Popen | None = None
    workdir: Path | None = None
    ports: tuple[int, ...] = ()

    @classmethod
    def from_url(cls, url: str) -> S3Server:
        """An external server given as http://KEY:SECRET@host:port/bucket."""
        parts = urlsplit(url)
        creds, _, host = parts.netloc.rpartition("@")
        access, _, secret = creds.partition(":")
        bucket = parts.path.strip("/").partition("/")[0]
        return cls(f"{parts.scheme}://{host}", bucket, unquote(access), unquote(secret))

    def url(self, prefix: str = "") -> str:
        """Connection string for this bucket and key prefix, credentials included."""
        scheme, _, host = self.endpoint.partition("://")
        creds = f"{quote(self.access, safe='')}:{quote(self.secret, safe='')}"
        return f"{scheme}://{creds}@{host}/{self.bucket}/{prefix}".rstrip("/")

    def boto3_client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
            config=Config(  # bounded, so that waiting for a server keeps its deadline
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def kill(self) -> None:
        """kill -9 the server started here: no chance to flush or clean up; its data dir stays
        for ``restart()``. Returns once the process is gone (its ports are free)."""
        if self.process is None or self.workdir is None:
            raise RuntimeError("kill() needs a server started by start_s3_server()")
        self.process.kill()  # SIGKILL, by our own child's PID
        self.process.wait()
        self._remove_sockets()

    def restart(self, timeout: float = 30.0) -> None:
        """Start a killed (or crashed) server again on the same ports and data dir, and wait,
        at most ``timeout`` seconds, until its bucket takes a write."""
        if self.workdir is None:
            raise RuntimeError("restart() needs a server started by start_s3_server()")
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the server is still running: kill() it first")
        deadline = time.monotonic() + timeout
        try:
            while True:  # a port still held a moment after the kill: weed exits; try again
                self._remove_sockets()
                self.process = _launch(self.workdir, self.port, append=True)
                try:
                    _wait_ready(self, deadline, create_bucket=False)
                    return
                except RuntimeError:  # it exited
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        except Exception as e:
            log = (self.workdir / "weed.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"weed mini did not come back on port {self.port}: {e!r}\n{log}"
            ) from e

    def _remove_sockets(self) -> None:
        """Unix sockets a killed server leaves behind (its own dir, and gRPC ones in /tmp)."""
        if self.workdir is not None:
            (self.workdir / "s3.sock").unlink(missing_ok=True)
        for port in self.ports:  # weed puts gRPC sockets in /tmp whatever TMPDIR says
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM the server we started, SIGKILL it after ``grace`` seconds (weed mini may take
        ~10 s to honour SIGTERM, and test data need not survive), remove its directory."""
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    os.kill(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            self.process = None
        self._remove_sockets()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(base: int) -> tuple[int, ...]:
    """Every port weed mini listens on for S3 port ``base``."""
    return tuple(p + off for p in range(base - 3, base + 2) for off in (0, GRPC_OFFSET))


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel picks outgoing connections' local ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_base_port(outside_ephemeral: bool = False) -> int:
    """A port P with P-3..P+1 and their gRPC twins (+10000) all free on 127.0.0.1; with
    ``outside_ephemeral``, all below the kernel's ephemeral range, so that no outgoing
    connection (a client retrying while the server is down) can take one before a restart."""
    low, high = 20000, 55000
    if outside_ephemeral:
        low, high = 10003, min(high, _ephemeral_ports()[0] - 2 - GRPC_OFFSET)
    for _ in range(200):
        base = random.randint(low, high)
        if all(_port_free(p) for p in _ports(base)):
            return base
    raise RuntimeError("no free port range for weed mini")


def _launch(workdir: Path, port: int, append: bool = False) -> subprocess.Popen:
    args = [
        str(WEED), "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", f"-master.port={port - 3}", f"-volume.port={port - 2}",
        f"-filer.port={port - 1}", f"-s3.port={port}", f"-s3.localSocket={workdir / 's3.sock'}",
        f"-admin.port={port + 1}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
        "-s3.port.lance=0", "-s3.autoCreateBucket=false", "-volume.max=1000",
    ]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(workdir)}
    with open(workdir / "weed.out", "ab" if append else "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def _wait_ready(server: S3Server, deadline: float, create_bucket: bool = True) -> None:
    """Until the bucket exists (created here unless ``create_bucket`` is false) and takes a
    write (the first write to a bucket is slow)."""
    client = server.boto3_client()
    created = not create_bucket
    while True:
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError("weed mini exited")
        try:
            if not created:
                client.create_bucket(Bucket=server.bucket)
                created = True
            client.put_object(Bucket=server.bucket, Key="warm-up", Body=b"x")
            client.delete_object(Bucket=server.bucket, Key="warm-up")
            return
        except Exception:  # not up yet: connection refused, 5xx, ...
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start_s3_server(
    attempts: int = 3, timeout: float = 60.0, restartable: bool = False
) -> S3Server:
    """Start ``weed mini`` with one fresh bucket; retries on other ports if a port was taken.
    ``restartable``: for a server a test kills and restarts (ports outside the ephemeral range)."""
    failure = ""
    for _ in range(attempts):
        workdir = Path(tempfile.mkdtemp(prefix="s3db-weed-"))
        port = free_base_port(outside_ephemeral=restartable)
        server = S3Server(
            endpoint=f"http://127.0.0.1:{port}",
            bucket=f"s3db-test-{uuid.uuid4().hex[:12]}",
            access="testkey",
            secret="testsecret",
            process=_launch(workdir, port),
            workdir=workdir,
            ports=_ports(port),
        )
        try:
            _wait_ready(server, time.monotonic() + timeout)
            return server
        except Exception as e:
            log = (workdir / "weed.out").read_text(errors="replace")[-3000:]
            failure = f"port {port}: {e!r}\n{log}"
            server.stop()
    raise RuntimeError(f"weed mini did not start ({attempts} attempts); last on {failure}")
