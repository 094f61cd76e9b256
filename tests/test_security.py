"""Hostile input and a hostile broker client, against real processes: a TLS redis-server with a
password, a real `celery -A workers worker -Q light` process, a file:// store, `itx submit`.

- workers read only inside the store: crafted chunks with URIs outside it are error records,
  and nothing outside is opened (FIFOs as targets: opening one would hang the task);
- http(s) inputs are fetched by the orchestrator only, only from allowed hosts, with size and
  time limits (a local HTTP server plays every kind of bad server);
- a pickled task message is refused, nothing runs, the worker goes on;
- rediss:// with a password works through settings, the certificate is verified, and the
  password shows up in no log, no output and no record.
"""
from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cluster import BIN, REPO, RedisServer, Worker, wait_port, worker_env
from tests.crafted import send_chunk

pytestmark = [pytest.mark.faults, pytest.mark.cluster, pytest.mark.slow]
SPEC = ["--profile", "tiny-random", "--ocr", "none", "--captioners", "blip", "--generator", "none"]


def png(path: Path | None = None, seed: int = 0, size=(32, 32)) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(a)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        return path.read_bytes()
    import io
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --- a TLS redis-server with a password ---------------------------------------------------
def make_certs(d: Path) -> dict:
    """A throwaway CA, a server certificate it signed for 127.0.0.1, and a second CA that did
    not sign it (verification must fail with that one). ``cryptography`` comes with moto."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, ca: bool):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(fname, obj):
        if isinstance(obj, x509.Certificate):
            data = obj.public_bytes(serialization.Encoding.PEM)
        else:
            data = obj.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
        (d / fname).write_bytes(data)
        return str(d / fname)

    ca_key, srv_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    return {"ca": write("ca.pem", cert("itx-test-ca", ca_key, "itx-test-ca", ca_key, True)),
            "cert": write("server.pem", cert("127.0.0.1", srv_key, "itx-test-ca", ca_key, False)),
            "key": write("server.key", srv_key),
            "other_ca": write("other-ca.pem",
                              cert("someone-else", other_key, "someone-else", other_key, True))}


class TLSRedis(RedisServer):
    def __init__(self, certs: dict, password: str):
        super().__init__(password=password)
        self.certs = certs

    @property
    def url(self) -> str:
        return f"rediss://:{self.password}@127.0.0.1:{self.port}"

    def start(self):
        cmd = [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
               "--port", "0", "--tls-port", str(self.port), "--dir", self.dir, "--save", "",
               "--appendonly", "no", "--requirepass", self.password,
               "--tls-cert-file", self.certs["cert"], "--tls-key-file", self.certs["key"],
               "--tls-ca-cert-file", self.certs["ca"], "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        return self


# --- an HTTP server that misbehaves in every way an image host can ------------------------
class Site:
    def __init__(self, image: bytes):
        self.hits: Counter = Counter()
        site = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", length=True, **headers):
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                site.hits[self.path] += 1
                p = self.path
                try:
                    if p in ("/ok.png", "/localhost-only.png"):
                        self._send(200, image, Content_Type="image/png")
                    elif p == "/big.png":  # says so up front
                        self._send(200, b"\x89PNG" + b"\0" * 30000)
                    elif p == "/big-nolen.png":  # says nothing, sends too much
                        self._send(200, b"\x89PNG" + b"\0" * 30000, length=False)
                    elif p == "/stall.png":  # never answers in time
                        time.sleep(4)
                        self._send(200, image)
                    elif p == "/drip.png":  # answers, then one byte at a time, forever
                        self.send_response(200)
                        self.send_header("Content-Length", "10000")
                        self.end_headers()
                        for _ in range(10000):
                            self.wfile.write(b"\0")
                            self.wfile.flush()
                            time.sleep(0.1)
                    elif p == "/redirect.png":  # an allowed host sends us to another host
                        port = self.server.server_address[1]
                        self._send(302, Location=f"http://localhost:{port}/localhost-only.png")
                    else:
                        self._send(404, b"no")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def sec(model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("sec")
    certs = make_certs(base)
    password = "pw-" + secrets.token_hex(12)
    root = base / "store"
    root.mkdir()
    site = Site(png(seed=7))
    redis = TLSRedis(certs, password).start()
    env = {"ITX_BROKER_URL": redis.url + "/0", "ITX_RESULT_BACKEND": redis.url + "/1",
           "ITX_REDIS_SSL_CA_CERTS": certs["ca"], "ITX_STORE": root.as_uri(),
           "ITX_PROFILE": "tiny-random", "ITX_MODEL_DIR": str(model_dir), "ITX_DEVICE": "cpu",
           "HF_HUB_OFFLINE": "1", "ITX_LIGHT_TIME_LIMIT": "60",
           "ITX_HTTP_ALLOW_HOSTS": f'["http://127.0.0.1:{site.port}"]',
           "ITX_HTTP_ALLOW_PRIVATE": "true", "ITX_HTTP_MAX_BYTES": "20000",
           "ITX_HTTP_TIMEOUT_S": "1.5"}
    w = Worker("light", env, "light-sec")
    try:
        w.wait_ready()
        yield {"env": env, "root": root, "base": base, "site": site, "worker": w,
               "password": password, "certs": certs, "redis": redis}
    finally:
        w.stop()
        redis.stop()
        site.server.shutdown()


def itx(env, *args, timeout=300):
    return subprocess.run([str(BIN / "itx"), *args], capture_output=True, text=True,
                          env=worker_env(env), timeout=timeout, cwd=REPO)


def records(root: Path, batch: str) -> dict[str, dict]:
    d = root / "runs" / batch / "results"
    return {p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))}


def kind(rec: dict) -> str | None:
    return rec["error"].split(":", 1)[0] if rec["error"] else None


def alive(w: Worker) -> bool:
    return w.proc.poll() is None and bool(w.children())


# --- tests -----------------------------------------------------------------------------------
def test_crafted_uris_outside_the_store_are_error_records_not_reads(sec, tmp_path):
    root, site = sec["root"], sec["site"]
    outside = sec["base"] / "outside"
    outside.mkdir(exist_ok=True)
    secret = outside / "secret.png"
    png(secret, seed=1)
    fifo = outside / "fifo.png"  # opening it for reading would block: the task would time out
    if not fifo.exists():
        os.mkfifo(fifo)
    png(root / "inputs" / "good.png", seed=2)
    (root / "inputs" / "link.png").unlink(missing_ok=True)
    (root / "inputs" / "link.png").symlink_to(secret)
    (root / "inputs" / "fifo-link.png").unlink(missing_ok=True)
    (root / "inputs" / "fifo-link.png").symlink_to(fifo)
    uri = root.as_uri()
    cases = {
        "good": (f"{uri}/inputs/good.png", None),
        "file-outside": (secret.as_uri(), "outside_store"),
        "fifo-outside": (fifo.as_uri(), "outside_store"),
        "traversal-uri": (f"{uri}/inputs/../../outside/secret.png", "outside_store"),
        "traversal-key": ("inputs/../../outside/secret.png", "outside_store"),
        "absolute-path": (str(secret), "outside_store"),
        "symlink-out": (f"{uri}/inputs/link.png", "outside_store"),
        "symlink-fifo": ("inputs/fifo-link.png", "outside_store"),
        "other-scheme-s3": ("s3://some-bucket/inputs/good.png", "outside_store"),
        "other-scheme-http": (site.url("/ok-from-worker.png"), "outside_store"),
        "other-scheme-ftp": ("ftp://127.0.0.1/inputs/good.png", "outside_store"),
        "missing": ("inputs/nope.png", "not_found"),
    }
    items = [{"id": k, "image": u} for k, (u, _) in cases.items()]
    t0 = time.monotonic()
    summary = send_chunk(sec["env"], "crafted", items, {"ocr": "none", "captioners": ["blip"],
                                                        "generator": "none"}, timeout=90)
    assert time.monotonic() - t0 < 60, "a read blocked: something opened a FIFO"
    assert summary["done"] == 1 and summary["failed"] == len(cases) - 1
    recs = records(root, "crafted")
    assert set(recs) == set(cases)
    for k, (_, expected) in cases.items():
        assert kind(recs[k]) == expected, (k, recs[k]["error"])
        if expected:
            assert recs[k]["captions"] == {} and recs[k]["prompt"] is None
    assert recs["good"]["captions"]["blip"]
    assert site.hits["/ok-from-worker.png"] == 0  # workers never fetch URLs
    assert alive(sec["worker"])


def test_http_inputs_only_from_allowed_hosts_within_limits(sec, tmp_path):
    site = sec["site"]
    port = site.port
    cases = {
        site.url("/ok.png"): None,
        site.url("/localhost-only.png", "localhost"): "disallowed_host",
        f"http://user:pw@127.0.0.1:{port}/ok.png": "disallowed_host",
        site.url("/redirect.png"): "disallowed_host",
        site.url("/big.png"): "file_too_large",
        site.url("/big-nolen.png"): "file_too_large",
        site.url("/stall.png"): "http_timeout",
        site.url("/drip.png"): "http_timeout",
        site.url("/missing.png"): "http_error",
        f"ftp://127.0.0.1:{port}/ok.png": "unknown_scheme",
    }
    manifest = tmp_path / "urls.jsonl"
    manifest.write_text("".join(json.dumps({"image": u}) + "\n" for u in cases))
    t0 = time.monotonic()
    r = itx(sec["env"], "submit", str(manifest), "--batch", "http", "--wait", *SPEC)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    from orchestrator.inputs.http import redact_url

    got = list(records(sec["root"], "http").values())
    # records keep URLs without credentials (and queries): the user:pw URL shows as ok.png's
    assert Counter((rec["source"], kind(rec)) for rec in got) == Counter(
        (redact_url(url), expected) for url, expected in cases.items())
    assert not any("pw@" in json.dumps(rec) for rec in got)
    ok = [rec for rec in got if rec["source"] == site.url("/ok.png") and not rec["error"]]
    assert ok[0]["captions"]["blip"]
    # the disallowed host was never asked, the redirect not followed, the drip cut short
    assert site.hits["/localhost-only.png"] == 0
    assert site.hits["/ok.png"] == 1
    assert time.monotonic() - t0 < 90


class _Canary:
    """Unpickling this creates a file: proof that a pickle was (or was not) deserialized."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_task_message_is_refused_and_nothing_runs(sec, tmp_path):
    from celery import Celery

    from workers.app import celery_config
    from workers.settings import Settings

    env = sec["env"]
    # the payload really would act if deserialized
    check = tmp_path / "unpickled-here"
    pickle.loads(pickle.dumps(_Canary(str(check)))).close()
    assert check.exists()

    canary = tmp_path / "pwned"
    probe = Celery("probe")
    probe.conf.update(celery_config(Settings(broker_url=env["ITX_BROKER_URL"],
                                             result_backend=env["ITX_RESULT_BACKEND"],
                                             redis_ssl_ca_certs=env["ITX_REDIS_SSL_CA_CERTS"])))
    w = sec["worker"]
    pids = (w.proc.pid, tuple(w.children()))
    before = w.output()
    tid = "pickled-" + secrets.token_hex(4)
    msg = probe.amqp.as_task_v2(tid, "itx.stage", args=(_Canary(str(canary)),), kwargs={})
    queue = probe.amqp.queues["light"]
    with probe.connection_for_write() as conn:
        conn.Producer().publish(msg.body, serializer="pickle", headers=msg.headers,
                                exchange=queue.exchange, routing_key="light", declare=[queue],
                                **msg.properties)
    deadline = time.monotonic() + 30
    while "ContentDisallowed" not in w.output()[len(before):] and time.monotonic() < deadline:
        time.sleep(0.3)
    log = w.output()[len(before):]
    assert "Refusing to deserialize untrusted content of type pickle" in log, log[-3000:]
    assert not canary.exists(), "a pickled message was deserialized"
    assert f"Task itx.stage[{tid}] received" not in log
    # the worker is the same and still works
    assert alive(w) and (w.proc.pid, tuple(w.children())) == pids
    png(sec["root"] / "inputs" / "after-pickle.png", seed=3)
    s = send_chunk(env, "after-pickle", [{"id": "ok", "image": "inputs/after-pickle.png"}],
                   {"ocr": "none", "captioners": ["blip"], "generator": "none"})
    assert s["done"] == 1
    assert not canary.exists()


def test_tls_password_broker_works_and_credentials_stay_secret(sec, tmp_path):
    env, password = sec["env"], sec["password"]
    for i in range(3):
        png(tmp_path / "in" / f"p{i}.png", seed=20 + i)
    r = itx(env, "submit", str(tmp_path / "in"), "--batch", "tls", "--wait", *SPEC)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    recs = records(sec["root"], "tls")
    assert len(recs) == 3 and all(rec["error"] is None for rec in recs.values())
    st = itx(env, "status", "tls", "--json")
    # the password appears nowhere: worker log, CLI output, records, anything in the store
    log = sec["worker"].output()
    assert "rediss://:**@127.0.0.1" in log  # Celery prints the broker, masked
    for text in (log, r.stdout, r.stderr, st.stdout, st.stderr):
        assert password not in text
    for p in sec["root"].rglob("*.json"):
        assert password not in p.read_text()
    # a certificate from another CA is refused; so is a wrong password; neither leaks a secret
    bad_ca = {**env, "ITX_REDIS_SSL_CA_CERTS": sec["certs"]["other_ca"]}
    wrong = "pw-wrong-" + secrets.token_hex(6)
    bad_pw = {**env, "ITX_BROKER_URL": env["ITX_BROKER_URL"].replace(password, wrong),
              "ITX_RESULT_BACKEND": env["ITX_RESULT_BACKEND"].replace(password, wrong)}
    procs = [subprocess.Popen([str(BIN / "itx"), "submit", str(tmp_path / "in"), "--batch", b,
                               *SPEC], env=worker_env(e), cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for b, e in (("bad-ca", bad_ca), ("bad-pw", bad_pw))]
    for p, secret_words in zip(procs, ([password], [password, wrong])):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, out + err[-3000:]
        assert "cannot reach the broker" in err, err[-2000:]
        for s in secret_words:
            assert s not in out + err
