"""A real S3 endpoint for tests: moto's server as a subprocess on a free loopback port.

    from tests.s3fixture import moto_server, s3_env

    with moto_server() as endpoint, s3_env(endpoint):
        boto3.client("s3").create_bucket(Bucket="b")   # AWS_ENDPOINT_URL points at moto

boto3 honours ``AWS_ENDPOINT_URL``, so code under test reaches moto exactly as it would reach
MinIO or AWS. Use a fresh bucket name per test: ``workers.storage.open_store`` keeps one client
per store URI for the life of the process.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(port: int) -> list[str]:
    exe = Path(sys.executable).parent / "moto_server"
    if exe.exists():
        return [str(exe), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@contextmanager
def moto_server(timeout: float = 30.0):
    """Start moto's S3-compatible server; yields its endpoint URL (``http://127.0.0.1:PORT``)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()  # noqa: SIM115  moto logs every request: a pipe would fill
    proc = subprocess.Popen(_command(port), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **DUMMY_CREDENTIALS})
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"moto_server exited with {proc.returncode}: {err}")
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {url} in {timeout:.0f} s")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def s3_env(endpoint: str):
    """Point boto3 at ``endpoint`` with dummy credentials; restores the environment after."""
    new = {"AWS_ENDPOINT_URL": endpoint, **DUMMY_CREDENTIALS}
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield endpoint
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
