"""Bounded user programs and confined inputs, through the real CLI (`itx run` in a subprocess,
no broker): edit rules under a time budget and a prompt bounded after each rule, caps on rules,
questions and GPU cost, batch names, manifest paths confined to the manifest's folder and the
input roots, other buckets only from an allow-list, http(s) origins by scheme, host and port,
public addresses only, no https -> http redirect, no signed query kept."""
from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cluster import BIN, REPO, kind, one_line_error, worker_env

NO_MODELS = ["--profile", "tiny-random", "--captioners", "none", "--ocr", "none",
             "--generator", "none"]
CATASTROPHIC = "regex:/(a|a)+$/x/"  # exponential backtracking on "aaaa…!"
A_LOT = "template:" + "a" * 40 + "!"


def itx(*args, env=None, timeout=120, cwd=None):
    return subprocess.run([str(BIN / "itx"), *args], capture_output=True, text=True,
                          env=worker_env({"ITX_PROFILE": "tiny-random", **(env or {})}),
                          timeout=timeout, cwd=cwd or REPO)


def png(path: Path, seed: int = 0, size=(24, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return path


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# --- edit rules: time budget and prompt growth ----------------------------------------------
def test_edit_rules_run_under_a_time_budget_in_embedded_mode(tmp_path):
    """A catastrophic regex used to hang `itx run` forever (no Celery time limit in-process):
    now it is a `timeout` record after the rule's CPU budget, and the other item goes on."""
    png(tmp_path / "in" / "a.png", 1)
    png(tmp_path / "in" / "b.png", 2)
    m = tmp_path / "in" / "m.jsonl"
    m.write_text(json.dumps({"image": "a.png", "edit": [A_LOT, CATASTROPHIC]}) + "\n"
                 + json.dumps({"image": "b.png", "edit": ["template:a fine prompt"]}) + "\n")
    t0 = time.monotonic()
    r = itx("run", str(m), "--out", str(tmp_path / "out"), *NO_MODELS,
            env={"ITX_EDIT_RULE_TIMEOUT_S": "0.5"}, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    recs = {Path(x["source"]).name: x for x in manifest(tmp_path / "out")}
    assert kind(recs["a.png"]) == "timeout" and "ITX_EDIT_RULE_TIMEOUT_S" in recs["a.png"]["error"]
    assert recs["b.png"]["prompt"] == "a fine prompt" and not recs["b.png"]["error"]
    assert time.monotonic() - t0 < 90


def test_prompt_length_is_checked_after_each_rule(tmp_path):
    """12 x `{prompt} {prompt}` plus a doubling regex would make ~50,000 characters (and a few
    more rules, gigabytes): the prompt is refused as soon as it passes the limit."""
    png(tmp_path / "in" / "a.png", 1)
    edits = ["template:a cat"] + ["template:{prompt} {prompt}"] * 12 + ["regex:/(.+)/\\1\\1/s"]
    args = [a for e in edits for a in ("--edit", e)]
    r = itx("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *NO_MODELS, *args,
            env={"ITX_MAX_PROMPT_CHARS": "300"})
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    (rec,) = manifest(tmp_path / "out")
    assert kind(rec) == "prompt_too_long", rec
    n = int(rec["error"].split("has ")[1].split()[0])
    assert 300 < n <= 2 * 300 + 1  # stopped at the first rule that went over, not at the end


# --- caps on the spec, refused up front; on manifest rows, error records --------------------
@pytest.mark.parametrize("args, word", [
    (["--steps", "300", "--generator", "sd"], "ITX_MAX_STEPS"),
    (["--size", "4096x4096", "--generator", "sd"], "ITX_MAX_OUTPUT_PIXELS"),
    (["--n", "9", "--generator", "sd"], "ITX_MAX_OUTPUTS_PER_ITEM"),
    ([a for _ in range(40) for a in ("--edit", "style:photo")], "ITX_MAX_EDIT_RULES"),
    (["--edit", "template:" + "x" * 5000], "ITX_MAX_EDIT_RULE_CHARS"),
    ([a for i in range(20) for a in ("--vqa", f"question {i}?")], "ITX_MAX_QUESTIONS"),
    (["--vqa", "why " * 200 + "?"], "ITX_MAX_QUESTION_CHARS"),
])
def test_operator_caps_refuse_a_spec_up_front(tmp_path, args, word):
    png(tmp_path / "in" / "a.png")
    base = ["--profile", "tiny-random", "--captioners", "none", "--ocr", "none"]
    if "--generator" not in args:
        base += ["--generator", "none"]
    r = itx("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *base, *args)
    assert r.returncode == 2, r.stdout + r.stderr[-3000:]
    assert word in one_line_error(r)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_caps_on_manifest_rows_are_error_records_and_echo_is_bounded(tmp_path):
    d = tmp_path / "in"
    png(d / "a.png", 1)
    long_name = "n" * 5000 + ".png"
    rows = [{"image": "a.png", "edit": ["style:photo"] * 40},
            {"image": "a.png", "questions": [f"q{i}?" for i in range(30)]},
            {"image": "a.png", "questions": ["why " * 300]},
            {"image": None}, {"image": ""}, {"image": 7},
            {"image": long_name}]
    (d / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = itx("run", str(d / "m.jsonl"), "--out", str(tmp_path / "out"), *NO_MODELS)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    recs = manifest(tmp_path / "out")
    assert [kind(x) for x in recs] == ["too_many_rules", "too_many_questions",
                                      "question_too_long", "bad_manifest", "bad_manifest",
                                      "bad_manifest", "unreadable"]
    assert "None" not in recs[3]["error"]
    big = json.dumps(recs[-1])
    assert len(big) < 5000, len(big)  # neither the source nor the message holds it all
    assert "more characters" in recs[-1]["source"]
    assert all(len(json.dumps(x)) < 4000 for x in recs)


# --- batch names --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a/b", "../../x", "x" * 300, ".hidden", "a b", ""])
def test_bad_batch_names_are_refused_before_anything_is_written(tmp_path, name):
    store = tmp_path / "store"
    env = {"ITX_STORE": store.as_uri(), "ITX_BROKER_URL": "redis://127.0.0.1:1/0",
           "ITX_RESULT_BACKEND": "redis://127.0.0.1:1/1"}  # nothing listens: never reached
    png(tmp_path / "in" / "a.png")
    r = itx("submit", str(tmp_path / "in"), "--batch", name, *NO_MODELS, env=env)
    assert r.returncode == 2, r.stdout + r.stderr[-3000:]
    assert "batch name" in one_line_error(r)
    assert not store.exists()
    r = itx("status", name, env=env)
    assert r.returncode == 2 and "batch name" in one_line_error(r)


# --- manifest confinement ----------------------------------------------------------------
def test_manifest_paths_are_confined_to_its_folder_and_the_input_roots(tmp_path):
    d, outside, root = tmp_path / "data", tmp_path / "secret", tmp_path / "shared"
    png(d / "ok.png", 1)
    png(d / "sub" / "deep.png", 2)
    png(outside / "key.png", 3)
    png(root / "r.png", 4)
    (d / "link.png").symlink_to(outside / "key.png")
    (d / "dirlink").symlink_to(outside)
    rows = {"ok.png": None, "sub/deep.png": None, "./sub/../ok.png": None,
            "../secret/key.png": "outside_roots", str(outside / "key.png"): "outside_roots",
            "link.png": "outside_roots", "dirlink/key.png": "outside_roots",
            "sub/../../secret/key.png": "outside_roots",
            str(root / "r.png"): None, "../shared/r.png": None,
            "s3://someone-elses-bucket/x.png": "disallowed_bucket"}
    m = d / "m.jsonl"
    m.write_text("".join(json.dumps({"image": k, "edit": [f"template:x{i}"]}) + "\n"
                         for i, k in enumerate(rows)))
    out = tmp_path / "out"
    r = itx("run", str(m), "--out", str(out), *NO_MODELS, "--input-root", str(root))
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    got = {x["source"]: kind(x) for x in manifest(out)}
    assert got == rows
    # nothing from outside was copied into the store
    inputs = {p.read_bytes() for p in (out / "inputs").iterdir()}
    assert (outside / "key.png").read_bytes() not in inputs
    # without --input-root the shared folder is outside too; a path named on the command
    # line is the user's own and is read
    r = itx("run", str(m), str(outside / "key.png"), "--out", str(out), *NO_MODELS)
    got = {x["source"]: kind(x) for x in manifest(out)}
    assert got[str(root / "r.png")] == "outside_roots" and got[str(outside / "key.png")] is None


# --- http(s) inputs ----------------------------------------------------------------------------
class _Site:
    """http and https servers on loopback: images, a redirect from https down to http."""

    def __init__(self, image: bytes, certs: dict | None = None):
        self.hits: Counter = Counter()
        site = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                site.hits[self.path.split("?")[0]] += 1
                if self.path.startswith("/img.png"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(image)))
                    self.end_headers()
                    self.wfile.write(image)
                elif self.path.startswith("/down"):
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{site.http_port}/img.png")
                    self.end_headers()
                else:
                    self.send_response(404)
                    self.end_headers()

        self.servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)]
        if certs:
            tls = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certs["cert"], certs["key"])
            tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
            self.servers.append(tls)
        for s in self.servers:
            s.daemon_threads = True
            threading.Thread(target=s.serve_forever, daemon=True).start()
        self.http_port = self.servers[0].server_address[1]
        self.https_port = self.servers[-1].server_address[1] if certs else None

    def close(self):
        for s in self.servers:
            s.shutdown()


def test_http_origins_addresses_redirects_and_signed_queries(tmp_path):
    from tests.test_security import make_certs

    certs = make_certs(tmp_path)
    img = png(tmp_path / "src.png", 5).read_bytes()
    site = _Site(img, certs)
    hp, sp = site.http_port, site.https_port
    try:
        signed = f"http://127.0.0.1:{hp}/img.png?X-Amz-Signature=SECRETSIG&X-Amz-Credential=AKIA"
        cases = {
            f"http://127.0.0.1:{hp}/img.png": None,
            signed: None,
            f"http://127.0.0.1:{hp + 1 if hp + 1 != sp else hp + 2}/img.png": "disallowed_host",
            f"https://127.0.0.1:{hp}/img.png": "disallowed_host",  # same port, other scheme
            f"https://127.0.0.1:{sp}/img.png": None,
            f"https://127.0.0.1:{sp}/down?sig=SECRETSIG": "insecure_redirect",
            f"http://127.0.0.1:{hp}/missing.png?token=SECRETSIG": "http_error",
        }
        m = tmp_path / "urls.jsonl"
        m.write_text("".join(json.dumps({"image": u, "edit": [f"template:x{i}"]}) + "\n"
                             for i, u in enumerate(cases)))
        allow = json.dumps([f"http://127.0.0.1:{hp}", f"https://127.0.0.1:{sp}"])
        env = {"ITX_HTTP_ALLOW_HOSTS": allow, "ITX_HTTP_ALLOW_PRIVATE": "true",
               "SSL_CERT_FILE": certs["ca"]}
        out = tmp_path / "out"
        r = itx("run", str(m), "--out", str(out), *NO_MODELS, env=env)
        assert r.returncode == 1, r.stdout + r.stderr[-3000:]
        recs = manifest(out)
        assert [kind(x) for x in recs] == list(cases.values()), [x["error"] for x in recs]
        # no signed query kept: records, batch.json, errors, the command's output
        for p in out.rglob("*.json*"):
            assert "SECRETSIG" not in p.read_text(errors="replace"), p
        assert "SECRETSIG" not in r.stdout + r.stderr
        assert recs[1]["source"] == f"http://127.0.0.1:{hp}/img.png"
        assert site.hits["/img.png"] == 3  # the redirect to http was not followed

        # loopback is not public: refused unless the operator allows private ranges
        before = sum(site.hits.values())
        env.pop("ITX_HTTP_ALLOW_PRIVATE")
        r = itx("run", f"http://127.0.0.1:{hp}/img.png", "--out", str(tmp_path / "o2"),
                *NO_MODELS, env=env)
        (rec,) = manifest(tmp_path / "o2")
        assert kind(rec) == "private_address", rec
        assert sum(site.hits.values()) == before
    finally:
        site.close()


def test_a_vqa_question_longer_than_the_tokenizer_takes_is_cut_not_an_error(tmp_path):
    png(tmp_path / "in" / "a.png", 3, size=(32, 32))
    question = "is there " + "a very long and winding question " * 150 + "?"  # > 512 tokens
    r = itx("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--profile",
            "tiny-random", "--captioners", "none", "--ocr", "none", "--generator", "none",
            "--vqa", question, env={"ITX_MAX_QUESTION_CHARS": "100000"}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    (rec,) = manifest(tmp_path / "out")
    assert not rec["error"] and isinstance(rec["vqa"][question], str)


def test_s3_reads_are_capped_also_without_a_content_length():
    """An S3-compatible endpoint that declares no Content-Length (HTTP/1.0, read to close):
    the read stops at the limit instead of taking whatever it sends."""
    import boto3

    from workers.storage import S3Store, TooLargeError

    body = b"\x89PNG" + b"\0" * 100_000

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()  # no Content-Length: the body ends when the connection does
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{srv.server_address[1]}",
                              region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        st = S3Store("s3://elsewhere", client=client)
        with pytest.raises(TooLargeError):
            st.get("big.png", max_bytes=10_000)
        assert st.get("big.png", max_bytes=200_000) == body
    finally:
        srv.shutdown()
