"""Trusted models only: workers load only what the operator allows (ITX_ALLOWED_MODELS, local
paths inside ITX_MODEL_DIR / ITX_MODEL_ROOTS, never relative to the current directory), no
pickled weights unless ITX_ALLOW_PICKLE, pinned hub revisions (ref@REVISION), and the model
set's MANIFEST.json trusted through the digest the operator pins (ITX_MODELS_MANIFEST_SHA256).

`itx submit` refuses a disallowed model in one line (exit 2); a crafted task that names one
reaches a real worker and becomes an error record, never a load.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.cluster import BIN, REPO, Worker, free_port, redis_server, worker_env
from tests.crafted import send_chunk
from tests.s3fixture import moto_server, s3_env
from workers.models import tiny
from workers.models.errors import ModelMissingError
from workers.models.loader import resolve_model
from workers.models.trust import (
    ModelNotAllowedError,
    check_allowed,
    check_torch_file,
    default_allowed,
    split_revision,
)
from workers.settings import reset_settings


@pytest.fixture
def settings_env(monkeypatch):
    """Set ITX_* variables for in-process code; settings are re-read before and after."""
    def set_(**kw):
        for k, v in kw.items():
            monkeypatch.setenv(k, v)
        reset_settings()
    yield set_
    monkeypatch.undo()
    reset_settings()


# --- the allow-list -------------------------------------------------------------------------
def test_default_allow_list_is_the_profiles_refs(settings_env, model_dir):
    settings_env()
    assert "Salesforce/blip-image-captioning-base" in default_allowed()
    for ref in ("Salesforce/blip-image-captioning-base",
                "stable-diffusion-v1-5/stable-diffusion-v1-5",
                "easyocr/en", "builtin", "tiny-random/blip", "tiny-random/anything",
                "Salesforce/blip-vqa-base@0123abc", str(model_dir / "tiny-random" / "blip")):
        check_allowed(ref)
    for ref, why in {"someone/backdoored-blip": "not allowed",
                     "Salesforce/blip-image-captioning-base-evil": "not allowed",
                     "../../etc": "relative path", "./models/blip": "relative path",
                     "tiny-random/../../x": "'..'", "/etc/itx-model": "outside the directories",
                     str(model_dir / ".." / "escape"): "outside the directories",
                     "~/model": "outside the directories", "": "empty"}.items():
        with pytest.raises(ModelNotAllowedError, match=why):
            check_allowed(ref)


def test_operator_lists_refs_prefixes_and_roots(settings_env, tmp_path):
    root = tmp_path / "team-models"
    settings_env(ITX_ALLOWED_MODELS="myorg/, exact/model, vendor/pre*",
                 ITX_MODEL_ROOTS=f"{root},{tmp_path / 'other'}")
    for ref in ("myorg/captioner", "exact/model", "exact/model@v2", "vendor/prefixed-x",
                "tiny-random/blip", "builtin", str(root / "a" / "b")):
        check_allowed(ref)
    for ref in ("exact/model-2", "myorgx/m", "Salesforce/blip-image-captioning-base",
                str(tmp_path / "elsewhere")):
        with pytest.raises(ModelNotAllowedError):
            check_allowed(ref)
    # a symlink inside a root that leads outside it is outside
    (root).mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(ModelNotAllowedError, match="outside"):
        check_allowed(str(root / "link"))


def test_refs_never_resolve_against_the_current_directory(settings_env, tmp_path, monkeypatch):
    md = tmp_path / "models"
    md.mkdir()
    cwd = tmp_path / "cwd"
    planted = cwd / "Salesforce" / "blip-image-captioning-base"
    planted.mkdir(parents=True)
    (planted / "config.json").write_text("{}")
    monkeypatch.chdir(cwd)
    settings_env(ITX_MODEL_DIR=str(md), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    # an allowed hub id present in the working directory is not taken from there
    with pytest.raises(ModelMissingError):
        resolve_model("Salesforce/blip-image-captioning-base")
    with pytest.raises(ModelNotAllowedError):
        resolve_model("Salesforce/blip-image-captioning-base/../../cwd")
    with pytest.raises(ModelNotAllowedError, match="relative path"):
        resolve_model("./Salesforce/blip-image-captioning-base")


# --- pickles ----------------------------------------------------------------------------------
class _Canary:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_weights_are_refused_unless_the_operator_opts_in(settings_env, tmp_path):
    md = tmp_path / "models"
    d = md / "myorg" / "pickled"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}))
    both = md / "myorg" / "both"  # safetensors beside a .bin: use_safetensors=True loads those
    shutil.copytree(d, both)
    (both / "model.safetensors").write_bytes(b"")
    settings_env(ITX_MODEL_DIR=str(md), ITX_ALLOWED_MODELS="myorg/")
    with pytest.raises(ModelNotAllowedError, match=r"pickled weights \(pytorch_model.bin\)"):
        resolve_model("myorg/pickled")
    assert resolve_model("myorg/both") == str(both)
    settings_env(ITX_ALLOW_PICKLE="true")
    assert resolve_model("myorg/pickled") == str(d)


def test_torch_state_dicts_load_only_without_code(settings_env, tmp_path):
    import torch

    settings_env()
    ok = tmp_path / "ok.pth"
    torch.save({"w": torch.zeros(2)}, ok)
    check_torch_file(ok)
    canary = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"w": _Canary(str(canary))}, evil)
    with pytest.raises(ModelNotAllowedError, match="not a plain state dict"):
        check_torch_file(evil)
    assert not canary.exists()


# --- pinned revisions ----------------------------------------------------------------------------
def test_a_pinned_revision_resolves_to_that_snapshot(tmp_path):
    assert split_revision("org/m@abc") == ("org/m", "abc")
    assert split_revision("org/m") == ("org/m", None)
    cache = tmp_path / "hub"
    repo = cache / "models--myorg--pinned"
    shas = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(2)]
    for sha in shas:
        snap = repo / "snapshots" / sha
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps({"sha": sha}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(shas[1])
    code = ("import sys; from workers.models.loader import resolve_model; "
            "print(resolve_model(sys.argv[1]))")
    env = worker_env({"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
                      "ITX_ALLOWED_MODELS": "myorg/pinned", "ITX_MODEL_DIR": str(tmp_path / "m")})
    for ref, sha in ((f"myorg/pinned@{shas[0]}", shas[0]), (f"myorg/pinned@{shas[1]}", shas[1]),
                     ("myorg/pinned", shas[1])):
        r = subprocess.run([sys.executable, "-c", code, ref], capture_output=True, text=True,
                           env=env, cwd=REPO, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert Path(r.stdout.strip()).name == sha, (ref, r.stdout)


# --- submit and worker ---------------------------------------------------------------------------
def _itx(env, *args):
    return subprocess.run([str(BIN / "itx"), *args], capture_output=True, text=True,
                          env=worker_env(env), cwd=REPO, timeout=300)


def test_submit_refuses_a_model_outside_the_allow_list_in_one_line(tmp_path, model_dir):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    port = free_port()  # nothing listens: a refused spec must not get as far as the broker
    env = {"ITX_BROKER_URL": f"redis://127.0.0.1:{port}/0",
           "ITX_RESULT_BACKEND": f"redis://127.0.0.1:{port}/1",
           "ITX_STORE": (tmp_path / "store").as_uri(), "ITX_MODEL_DIR": str(model_dir)}
    evil = tmp_path / "evil-model"
    for caps in ("someone/backdoored-blip", str(evil), "./evil-model"):
        for cmd in ("submit", "run"):
            extra = ["--out", str(tmp_path / "out")] if cmd == "run" else []
            r = _itx(env, cmd, str(tmp_path / "in"), "--profile", "tiny-random", "--ocr", "none",
                     "--generator", "none", "--captioners", caps, *extra)
            assert r.returncode == 2, (cmd, caps, r.stdout, r.stderr[-2000:])
            err = r.stderr.strip()
            assert "not allowed" in err or "relative path" in err or "outside the" in err, err
            assert "Traceback" not in err and "cannot reach the broker" not in err, err
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("*.json"))


@pytest.fixture(scope="module")
def pool(model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("trust")
    root = base / "operator-models"
    shutil.copytree(tiny.build("blip", model_dir), root / "blip-copy")
    shutil.copytree(tiny.build("blip", model_dir), base / "planted" / "blip-copy")
    store = base / "store"
    store.mkdir()
    with redis_server() as redis:
        env = {"ITX_BROKER_URL": redis.url + "/0", "ITX_RESULT_BACKEND": redis.url + "/1",
               "ITX_STORE": store.as_uri(), "ITX_PROFILE": "tiny-random",
               "ITX_MODEL_DIR": str(model_dir), "ITX_MODEL_ROOTS": str(root),
               "ITX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "ITX_LIGHT_TIME_LIMIT": "60"}
        w = Worker("light", env, "light-trust")
        try:
            w.wait_ready()
            yield {"env": env, "store": store, "root": root, "base": base, "worker": w}
        finally:
            w.stop()


def test_a_crafted_task_naming_a_disallowed_model_is_an_error_record_not_a_load(pool):
    store, base = pool["store"], pool["base"]
    Image.new("RGB", (16, 16), (200, 30, 30)).save(store / "p.png")
    items = [{"id": "a", "image": "p.png"}]
    planted = str(base / "planted" / "blip-copy")  # real weights, outside every allowed root
    for i, spec in enumerate([{"captioners": [planted]},
                              {"captioners": ["someone/backdoored-blip"]},
                              {"captioners": ["blip"], "models": {"caption:blip": planted}}]):
        batch = f"crafted-{i}"
        s = send_chunk(pool["env"], batch, items, {"ocr": "none", "generator": "none", **spec})
        assert s["failed"] == 1 and s["done"] == 0, s
        rec = json.loads((store / "runs" / batch / "results" / "a.json").read_text())
        assert rec["error"].startswith("model_unavailable") and (
            "not allowed" in rec["error"] or "outside the directories" in rec["error"]), rec

        assert rec["captions"] == {}
    log = pool["worker"].output()
    assert "ModelNotAllowedError" in log
    # the operator's own root loads, through `itx submit` as users run it
    (base / "in").mkdir(exist_ok=True)
    Image.new("RGB", (16, 16), (20, 30, 230)).save(base / "in" / "q.png")
    r = _itx(pool["env"], "submit", str(base / "in"), "--batch", "roots", "--wait", "--ocr", "none",
             "--generator", "none", "--captioners", str(pool["root"] / "blip-copy"))
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    recs = list((store / "runs" / "roots" / "results").glob("*.json"))
    assert len(recs) == 1
    rec = json.loads(recs[0].read_text())
    assert rec["error"] is None and rec["captions"][str(pool["root"] / "blip-copy")]


# --- the model set's manifest, pinned by digest -------------------------------------------
@pytest.fixture(scope="module")
def s3():
    with moto_server() as endpoint, s3_env(endpoint):
        import boto3

        yield boto3.client("s3")


def test_pinned_manifest_digest_refuses_a_swapped_file_and_checksum(tmp_path, s3, settings_env):
    from workers.models.distribute import MANIFEST, ChecksumError, pull_models_from, push_models

    bucket = f"models-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    src = tmp_path / "src"
    (src / "org" / "m").mkdir(parents=True)
    (src / "org" / "m" / "config.json").write_text("{}")
    (src / "org" / "m" / "model.safetensors").write_bytes(os.urandom(5000))
    uri = f"s3://{bucket}/models"
    settings_env()
    pushed = push_models(src, uri)
    body = s3.get_object(Bucket=bucket, Key=f"models/{MANIFEST}")["Body"].read()
    digest = hashlib.sha256(body).hexdigest()
    assert pushed.manifest_sha256 == digest and digest in str(pushed)

    settings_env(ITX_MODELS_MANIFEST_SHA256=digest)
    got = pull_models_from(uri, tmp_path / "ok")
    assert got.transferred == 2 and got.manifest_sha256 == digest

    # someone with write access swaps the weights *and* their checksum in the manifest
    evil = os.urandom(5000)
    s3.put_object(Bucket=bucket, Key="models/org/m/model.safetensors", Body=evil)
    m = json.loads(body)
    m["files"]["org/m/model.safetensors"] = {"size": len(evil),
                                             "sha256": hashlib.sha256(evil).hexdigest()}
    s3.put_object(Bucket=bucket, Key=f"models/{MANIFEST}", Body=json.dumps(m).encode())
    dest = tmp_path / "dest"
    with pytest.raises(ChecksumError, match="ITX_MODELS_MANIFEST_SHA256"):
        pull_models_from(uri, dest)
    assert not dest.exists() or not any(p.is_file() for p in dest.rglob("*"))
    # and a swapped file alone: the manifest's checksum refuses it
    s3.put_object(Bucket=bucket, Key=f"models/{MANIFEST}", Body=body)
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        pull_models_from(uri, dest)
    assert not (dest / "org/m/model.safetensors").exists()


def test_models_push_prints_the_digest_to_pin(tmp_path, model_dir):
    src = tmp_path / "src"
    (src / "org" / "m").mkdir(parents=True)
    (src / "org" / "m" / "model.safetensors").write_bytes(b"x" * 100)
    dest = tmp_path / "set"
    r = _itx({"ITX_MODEL_DIR": str(model_dir)}, "models", "push", str(src), dest.as_uri())
    assert r.returncode == 0, r.stderr
    digest = hashlib.sha256((dest / "MANIFEST.json").read_bytes()).hexdigest()
    assert digest in r.stdout.replace("\n", "")
    r = _itx({"ITX_MODEL_DIR": str(model_dir), "ITX_MODELS_MANIFEST_SHA256": "0" * 64},
             "models", "pull", "--from", dest.as_uri(), "--to", str(tmp_path / "pulled"))
    assert r.returncode == 1 and "ITX_MODELS_MANIFEST_SHA256" in r.stderr, r.stderr
