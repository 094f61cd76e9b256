"""Real services for cluster tests: redis-server on a free port, Celery worker processes
for the light and heavy pools, Flower. Plain context managers; fixtures live in the tests."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the exact commands the docs, compose and k8s files run (tests/test_deploy.py checks them)
LIGHT_CMD = ["celery", "-A", "workers", "worker", "-Q", "light"]
HEAVY_CMD = ["celery", "-A", "workers", "worker", "-Q", "heavy"]
FLOWER_CMD = ["celery", "-A", "workers", "flower"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class RedisServer:
    def __init__(self, port: int | None = None, appendonly: bool = False, password: str | None = None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="itx-redis-")
        self.appendonly = appendonly
        self.password = password
        self.proc = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def start(self):
        cmd = [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
               "--port", str(self.port), "--dir", self.dir, "--save", "",
               "--appendonly", "yes" if self.appendonly else "no"]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def redis_server(**kw):
    r = RedisServer(**kw).start()
    try:
        yield r
    finally:
        r.stop()


def worker_env(base: dict) -> dict:
    env = {**os.environ, **base}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Worker:
    """A real `celery -A workers worker -Q <queue>` process (prefork pool)."""

    def __init__(self, queue: str, env: dict, name: str, concurrency: int = 1, extra=()):
        self.queue, self.env, self.name = queue, env, name
        self.log = tempfile.NamedTemporaryFile(prefix=f"itx-{name}-", suffix=".log", delete=False)
        cmd = [str(BIN / "celery"), *LIGHT_CMD[1:-1], queue,  # -Q light|heavy|ocr
               "--concurrency", str(concurrency), "--loglevel", "INFO", "-n", f"{name}@%h",
               "--without-mingle", "--without-gossip", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=worker_env(env), cwd=REPO, start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> "Worker":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited {self.proc.returncode}:\n"
                                   + self.output()[-3000:])
            if " ready." in self.output():
                return self
            time.sleep(0.3)
        raise RuntimeError(f"worker {self.name} not ready after {timeout} s:\n" + self.output()[-3000:])

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def children(self) -> list[int]:
        try:
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
            return [int(x) for x in out.stdout.split()]
        except Exception:
            return []

    def kill9(self) -> None:
        """kill -9 the parent and every pool process."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # any orphaned pool process
        except (ProcessLookupError, PermissionError):
            pass


@contextmanager
def workers(env: dict, light: int = 1, heavy: int = 1, tag: str = "t"):
    ws = [Worker("light", env, f"light{i}-{tag}") for i in range(light)] + \
         [Worker("heavy", env, f"heavy{i}-{tag}") for i in range(heavy)]
    try:
        for w in ws:
            w.wait_ready()
        yield ws
    finally:
        for w in ws:
            w.stop()


def kind(rec: dict) -> str | None:
    """A record's error kind (``not_an_image``, ``timeout``, …), or None."""
    return rec["error"].split(":", 1)[0] if rec.get("error") else None


def one_line_error(r) -> str:
    """The single ``error:`` line a refused `itx` command printed (asserts there is one)."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-3000:]
    return lines[0]
