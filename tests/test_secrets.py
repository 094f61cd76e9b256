"""No secret in output: a password in ITX_BROKER_URL shows up nowhere when things go wrong in
unexpected ways (a typo in the URL, a bad port, an unknown transport, a broker whose queue
holds the wrong type, a store that cannot be written), neither from `itx submit` nor from a
`celery -A workers worker`. TLS options for amqps:// and the warning for unverified Redis TLS.
"""
from __future__ import annotations

import secrets
import subprocess

import pytest
from PIL import Image

from tests.cluster import BIN, REPO, redis_server, worker_env

SPEC = ["--profile", "tiny-random", "--ocr", "none", "--captioners", "blip", "--generator", "none"]
PASSWORD = "pw-" + secrets.token_hex(10)


def _run(cmd, env, timeout=60):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(env), cwd=REPO,
                           timeout=timeout)
        return r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:  # a worker retrying a broker it cannot use
        out = b"".join(x or b"" for x in (e.stdout, e.stderr)).decode(errors="replace")
        return None, out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    Image.new("RGB", (16, 16), (9, 99, 199)).save(d / "a.png")
    return d


@pytest.fixture(scope="module")
def redis_pw():
    with redis_server(password=PASSWORD) as r:
        yield r


def _env(broker: str, backend: str, store: str) -> dict:
    return {"ITX_BROKER_URL": broker, "ITX_RESULT_BACKEND": backend, "ITX_STORE": store,
            "ITX_PROFILE": "tiny-random", "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("broker", [
    f"rediss//:{PASSWORD}@127.0.0.1:6399/0",           # a typo: kombu took it for a host name
    f"redis:/:{PASSWORD}@127.0.0.1:6399/0",
    f"redis://:{PASSWORD}@127.0.0.1:port/0",           # not a port
    f"nosuch://:{PASSWORD}@127.0.0.1:6399/0",          # no such transport
    f"redis://:{PASSWORD}@[::1:6399/0",                # broken IPv6 literal
], ids=["scheme-typo", "one-slash", "not-a-port", "no-such-transport", "broken-ipv6"])
# stable ids: the password is random per process (pytest-xdist workers must collect the same
# names), and a test id is printed, which a secret should not be
def test_a_bad_broker_url_never_prints_its_password(broker, inputs, tmp_path):
    env = _env(broker, f"redis://:{PASSWORD}@127.0.0.1:6399/1", (tmp_path / "store").as_uri())
    rc, out = _run([str(BIN / "itx"), "submit", str(inputs), *SPEC], env)
    assert rc not in (0, None), out[-3000:]
    assert PASSWORD not in out, out[-3000:]
    rc, out = _run([str(BIN / "celery"), "-A", "workers", "worker", "-Q", "light",
                    "--concurrency", "1", "--without-mingle", "--without-gossip"], env, timeout=25)
    assert rc != 0, out[-3000:]
    assert PASSWORD not in out, out[-3000:]


def test_unexpected_broker_and_store_errors_never_print_the_password(redis_pw, inputs, tmp_path):
    url = redis_pw.url
    env = _env(url + "/0", url + "/1", (tmp_path / "store").as_uri())
    import redis

    r = redis.Redis(port=redis_pw.port, password=PASSWORD)
    r.set("light", "not a list")  # the queue holds a string: every push fails
    try:
        rc, out = _run([str(BIN / "itx"), "submit", str(inputs), *SPEC], env)
        assert rc not in (0, None), out[-3000:]
        assert "WRONGTYPE" in out and PASSWORD not in out, out[-3000:]
    finally:
        r.delete("light")
    # a store that cannot be written: an unexpected OSError, a full traceback, no password
    env = _env(url + "/0", url + "/1", "file:///proc/1/itx-store")
    rc, out = _run([str(BIN / "itx"), "submit", str(inputs), *SPEC], env)
    assert rc not in (0, None) and "Traceback" in out, out[-3000:]
    assert PASSWORD not in out, out[-3000:]


def test_settings_never_show_the_urls():
    from workers.settings import Settings

    s = Settings(broker_url=f"redis://:{PASSWORD}@h:6379/0",
                 result_backend=f"redis://:{PASSWORD}@h:6379/1")
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump())):
        assert PASSWORD not in text
    assert s.broker_url.get_secret_value().endswith("@h:6379/0")


def test_amqps_broker_gets_verified_tls():
    import ssl

    from workers.app import celery_config
    from workers.settings import Settings

    conf = celery_config(Settings(broker_url="amqps://u:p@rabbit.example:5671//",
                                  result_backend="redis://127.0.0.1:6379/1",
                                  amqp_ssl_ca_certs="/etc/itx/ca.pem"))
    tls = conf["broker_use_ssl"]
    assert tls["cert_reqs"] == ssl.CERT_REQUIRED and tls["ca_certs"] == "/etc/itx/ca.pem"
    assert "server_hostname" in tls  # None: kombu puts the URL's host there (SNI + host check)
    assert "broker_use_ssl" not in celery_config(Settings(broker_url="amqp://u:p@h//"))


def test_unverified_redis_tls_logs_a_warning():
    env = {"ITX_BROKER_URL": "rediss://:x@127.0.0.1:6380/0", "ITX_REDIS_SSL_CERT_REQS": "none"}
    rc, out = _run([str(BIN / "python"), "-c", "import workers"], env)
    assert rc == 0, out
    assert "ITX_REDIS_SSL_CERT_REQS=none" in out and "not verified" in out
    rc, out = _run([str(BIN / "python"), "-c", "import workers"],
                   {**env, "ITX_REDIS_SSL_CERT_REQS": "required"})
    assert rc == 0 and "not verified" not in out
