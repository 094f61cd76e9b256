"""Process control for the benchmark runner: every benchmark and everything it starts
(redis-server, moto's server, celery workers and their pool processes, `itx submit --wait`)
is killed, whole, when the benchmark ends, fails or runs out of time.

- ``become_subreaper()``: on Linux, processes orphaned below us (a celery worker whose
  benchmark died: workers run in their own session, so a process-group kill misses them)
  are re-parented to this process instead of init, so ``descendants()`` still finds them.
- ``kill_tree(proc)``: SIGTERM to the benchmark's process group (the benchmark's own
  clean-up runs: ``common.cli`` turns SIGTERM into SystemExit), a grace period, then
  SIGKILL to every process still below us and their process groups; zombies are reaped.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process we can see (from /proc)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            # the command name is in parentheses and may hold spaces: split after it
            out[int(d)] = int(s.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return out


def descendants(pid: int | None = None) -> list[int]:
    """Every process below ``pid`` (default: this process), parents before children."""
    root = pid or os.getpid()
    kids: dict[int, list[int]] = {}
    for p, pp in _parents().items():
        kids.setdefault(pp, []).append(p)
    out, todo = [], list(kids.get(root, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo += kids.get(p, [])
    return out


def describe(pids: list[int]) -> list[str]:
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            out.append(f"{p} {cmd[:120]}")
        except OSError:
            pass
    return out


def _signal(pids: list[int], sig: int) -> None:
    """``sig`` to each process's group (a worker's pool processes share it), or to the
    process alone where it shares our own group."""
    own = os.getpgrp()
    for p in pids:
        try:
            g = os.getpgid(p)
            if g != own:
                os.killpg(g, sig)
            else:
                os.kill(p, sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass


def reap(skip: int | None = None) -> None:
    """Collect exited children (orphans re-parented to us become our children), except
    ``skip`` (a Popen that collects its own status)."""
    me = os.getpid()
    for p, pp in _parents().items():
        if pp == me and p != skip:
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass


def kill_tree(proc: subprocess.Popen | None, grace: float = 10.0) -> list[str]:
    """End ``proc`` (started with ``start_new_session=True``) and everything below this
    process. Returns a description of what had to be SIGKILLed (empty when all was clean)."""
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    left = descendants()
    deadline = time.monotonic() + 3  # helpers that end with their parent (multiprocessing's
    while left and time.monotonic() < deadline:  # resource tracker) get a moment to do so
        time.sleep(0.1)
        reap(proc.pid if proc else None)
        left = descendants()
    killed = describe(left)
    if left:  # left behind: a short SIGTERM grace (servers exit at once), then SIGKILL
        _signal(left, signal.SIGTERM)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            reap(proc.pid if proc else None)
            if not (left := descendants()):
                break
            time.sleep(0.1)
        _signal(left, signal.SIGKILL)
    if proc is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    for _ in range(50):
        reap()
        if not descendants():
            break
        time.sleep(0.1)
    return killed
