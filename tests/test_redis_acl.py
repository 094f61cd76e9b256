"""Redis ACL users per role (k8s/components/redis-acl/users.acl, the file compose and the dev
overlay mount), on a real redis-server started with that file: a batch runs end to end with
the worker and submitter users (real `celery -A workers worker` processes, `itx submit
--wait`), Flower works with its user, KEDA's user reads queue lengths and nothing else, and
no role can run a @dangerous command (FLUSHALL, CONFIG, DEBUG, SHUTDOWN, …).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from PIL import Image

from tests.cluster import BIN, FLOWER_CMD, REPO, Worker, free_port, wait_port, worker_env

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ACL_DIR = REPO / "k8s" / "components" / "redis-acl"
ROLES = {"default": "REDIS_PASSWORD", "itx-worker": "REDIS_WORKER_PASSWORD",
         "itx-submitter": "REDIS_SUBMITTER_PASSWORD", "itx-flower": "REDIS_FLOWER_PASSWORD",
         "itx-keda": "REDIS_KEDA_PASSWORD"}
DANGEROUS = [("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "maxmemory", "1"),
             ("CONFIG", "GET", "requirepass"), ("DEBUG", "SLEEP", "0"), ("SHUTDOWN", "NOSAVE"),
             ("KEYS", "*"), ("ACL", "SETUSER", "x", "on"), ("SAVE",), ("BGREWRITEAOF",),
             ("CLIENT", "KILL", "TYPE", "normal"), ("SCRIPT", "FLUSH"), ("REPLICAOF", "NO", "ONE")]


def render(passwords: dict, out: Path, unset=()) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update({ROLES[u]: p for u, p in passwords.items() if u not in unset})
    r = subprocess.run(["sh", str(ACL_DIR / "render-acl.sh"), str(ACL_DIR / "users.acl"), str(out)],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return out.read_text()


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory):
    d = tmp_path_factory.mktemp("acl")
    pw = {u: f"{u.replace('-', '')}{secrets.token_hex(8)}" for u in ROLES}
    text = render(pw, d / "users.acl")
    port = free_port()
    datadir = tempfile.mkdtemp(prefix="itx-redis-acl-")
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                             "--aclfile", str(d / "users.acl"), "--dir", datadir, "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        yield {"port": port, "pw": pw, "text": text, "dir": d}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(datadir, ignore_errors=True)


def client(r, user, db=0) -> redis.Redis:
    return redis.Redis(port=r["port"], username=user, password=r["pw"][user], db=db)


def url(r, user, db) -> str:
    return f"redis://{user}:{r['pw'][user]}@127.0.0.1:{r['port']}/{db}"


def denied(c: redis.Redis, *cmd) -> bool:
    try:
        c.execute_command(*cmd)
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as e:  # DEBUG: also off by default in Redis 7
        return "NOPERM" in str(e) or "DEBUG command not allowed" in str(e)
    return False


def test_the_rendered_file_holds_no_password_and_disables_unset_users(acl_redis, tmp_path):
    for p in acl_redis["pw"].values():
        assert p not in acl_redis["text"]
    text = render({"default": "adminonly1"}, tmp_path / "partial.acl",
                  unset=[u for u in ROLES if u != "default"])
    lines = {ln.split()[1]: ln for ln in text.splitlines()}
    assert all(" off resetpass " in lines[u] for u in ROLES if u != "default")
    bad = subprocess.run(["sh", str(ACL_DIR / "render-acl.sh"), str(ACL_DIR / "users.acl"),
                          str(tmp_path / "bad.acl")], env={"PATH": os.environ["PATH"],
                                                           "REDIS_PASSWORD": "a b;rm -rf x"},
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "letters, digits" in bad.stderr


def test_keda_reads_queue_lengths_and_nothing_else(acl_redis):
    admin = client(acl_redis, "default")
    admin.rpush("light", "x", "y")
    admin.set("celery-task-meta-1", "{}")
    keda = client(acl_redis, "itx-keda")
    assert keda.llen("light") == 2 and keda.llen("heavy") == 0
    for cmd in [("LLEN", "unacked"), ("LLEN", "celery-task-meta-1"),
                ("GET", "celery-task-meta-1"),
                ("LRANGE", "light", "0", "-1"), ("LPUSH", "light", "z"), ("RPOP", "light"),
                ("DEL", "light"), ("PING",), ("INFO",), ("PUBLISH", "c", "m"), ("SCAN", "0"),
                *DANGEROUS]:
        assert denied(keda, *cmd), cmd
    assert admin.llen("light") == 2
    admin.delete("light", "celery-task-meta-1")


def test_no_role_runs_a_dangerous_command(acl_redis):
    for user in ("itx-worker", "itx-submitter", "itx-flower"):
        c = client(acl_redis, user)
        for cmd in DANGEROUS:
            assert denied(c, *cmd), (user, cmd)
    sub = client(acl_redis, "itx-submitter")
    for cmd in [("BRPOP", "light", "1"), ("RPOP", "light"), ("HGETALL", "unacked"),
                ("HSET", "unacked", "a", "b"), ("ZRANGE", "unacked_index", "0", "-1"),
                ("PSUBSCRIBE", "/0.celeryev/*")]:
        assert denied(sub, *cmd), cmd  # a submitter cannot take, ack or watch others' tasks


@pytest.fixture(scope="module")
def acl_cluster(acl_redis, model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("acl-store")
    common = {"ITX_STORE": store.as_uri(), "ITX_PROFILE": "tiny-random",
              "ITX_MODEL_DIR": str(model_dir), "ITX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
              "ITX_LIGHT_TIME_LIMIT": "120", "ITX_HEAVY_TIME_LIMIT": "120"}
    role = {u: {**common, "ITX_BROKER_URL": url(acl_redis, u, 0),
                "ITX_RESULT_BACKEND": url(acl_redis, u, 1)}
            for u in ("itx-worker", "itx-submitter", "itx-flower")}
    ws = [Worker("light", role["itx-worker"], "light-acl"),
          Worker("heavy", role["itx-worker"], "heavy-acl")]
    fport = free_port()
    flog = tempfile.NamedTemporaryFile(prefix="itx-flower-acl-", suffix=".log", delete=False)
    flower = subprocess.Popen(
        [str(BIN / "celery"), *FLOWER_CMD[1:], f"--port={fport}", "--address=127.0.0.1"],
        env=worker_env({**role["itx-flower"], "FLOWER_UNAUTHENTICATED_API": "true"}), cwd=REPO,
        stdout=flog, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for w in ws:
            w.wait_ready()
        wait_port(fport, 60, flower)
        # Flower turns task events on in every worker (a broadcast every 5 s): a batch sent
        # before that is invisible to it, however long the test then waits
        deadline = time.monotonic() + 60
        while not all("enabled by remote" in w.output() for w in ws):
            assert time.monotonic() < deadline, "Flower never enabled the workers' task events"
            time.sleep(0.3)
        yield {"role": role, "store": store, "workers": ws, "flower": f"http://127.0.0.1:{fport}",
               "flower_log": Path(flog.name)}
    finally:
        for w in ws:
            w.stop()
        try:
            os.killpg(flower.pid, signal.SIGTERM)
            flower.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(flower.pid, signal.SIGKILL)


def test_a_batch_runs_end_to_end_with_the_worker_and_submitter_users(acl_redis, acl_cluster,
                                                                     tmp_path):
    admin = client(acl_redis, "default")
    admin.execute_command("ACL", "LOG", "RESET")
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        Image.new("RGB", (24, 24), (40 * i, 90, 200)).save(d / f"p{i}.png")
    r = subprocess.run(
        [str(BIN / "itx"), "submit", str(d), "--batch", "acl", "--wait", "--ocr", "none",
         "--captioners", "blip", "--vqa", "what is it?", "--generator", "sd", "--steps", "2",
         "--size", "32x32"], env=worker_env(acl_cluster["role"]["itx-submitter"]), cwd=REPO,
        capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    recs = [json.loads(p.read_text())
            for p in (acl_cluster["store"] / "runs" / "acl" / "results").glob("*.json")]
    assert len(recs) == 3 and all(x["error"] is None and x["outputs"] for x in recs), recs
    # Flower sees both pools (an inspect broadcast and its replies) and the queues
    with urllib.request.urlopen(acl_cluster["flower"] + "/api/workers?refresh=1", timeout=60) as f:
        workers = json.loads(f.read())
    assert {n.split("@")[0] for n in workers} >= {"light-acl", "heavy-acl"}, workers
    with urllib.request.urlopen(acl_cluster["flower"] + "/api/tasks", timeout=30) as f:
        tasks = json.loads(f.read())
    assert {t["name"] for t in tasks.values()} >= {"itx.stage", "itx.compose", "itx.generate"}
    # nothing any role did was refused: the ACLs hold what Celery, kombu and Flower use
    log = admin.execute_command("ACL", "LOG")
    assert not log, log
    # no password anywhere: CLI output, worker and Flower logs, Flower's task args, the store
    stored = [p.read_text() for p in acl_cluster["store"].rglob("*.json")]
    for text in (r.stdout, r.stderr, acl_cluster["flower_log"].read_text(), json.dumps(tasks),
                 *(w.output() for w in acl_cluster["workers"]), *stored):
        for p in acl_redis["pw"].values():
            assert p not in text
