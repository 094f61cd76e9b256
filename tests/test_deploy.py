"""The deployment files, checked as files (no Docker engine or cluster runs here): Kubernetes
overlays build and validate against the API schemas, compose passes `docker-compose config`,
and all of them keep the contract with the code: real settings, real queues, the same worker
commands, GPUs only where they belong, grace periods longer than the task time limits."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from workers.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
K8S = REPO / "k8s"
# gpu-ocr: the gpu overlay with components/ocr-pool added, as an operator adds it (k8s_tree)
OVERLAYS = ("dev", "gpu", "gpu-ocr")
K8S_VERSION = "1.30"  # oldest Kubernetes the manifests target

# The one set of worker command lines: Dockerfile, compose, Kubernetes and the process tests.
WORKER_COMMANDS = {
    q: f"celery -A workers worker -Q {q} --concurrency 1 --without-gossip --without-mingle "
       f"--loglevel INFO"
    for q in ("light", "heavy")
}
WORKER_COMMANDS["ocr"] = ("celery -A workers worker -Q ocr --concurrency 4 --without-gossip "
                          "--without-mingle --loglevel INFO")
FLOWER_COMMAND = "celery -A workers flower --port=5555"
HEARTBEAT_FILE = "/tmp/itx-heartbeat"
TIME_LIMIT_SETTING = {"light": "ITX_LIGHT_TIME_LIMIT", "heavy": "ITX_HEAVY_TIME_LIMIT",
                      "ocr": "ITX_LIGHT_TIME_LIMIT"}

SETTINGS_ENV = {f"ITX_{name.upper()}" for name in Settings.model_fields}
# variables of the libraries itx runs on, which itx containers may set too
LIBRARY_ENV = {
    "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",  # boto3
    "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_TOKEN",                  # the hub client
    "NVIDIA_VISIBLE_DEVICES",                     # the NVIDIA runtime (void: no GPU for init)
    "OMP_NUM_THREADS",                            # torch / onnxruntime threads (the OCR pool)
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    if path is None:
        msg = f"{tool} is not installed (scripts/setup.sh installs it with ITX_SETUP_DEV=1)"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def _flower_options() -> set[str]:
    from flower.options import options

    return {f"FLOWER_{name.upper().replace('-', '_')}" for name in options._options}


def check_env_names(names, where: str, flower: bool = False) -> None:
    """ITX_* must be settings; FLOWER_* must be Flower options (Flower exits on unknown ones);
    anything else must be a library's variable we mean to set."""
    for name in names:
        if name.startswith("ITX_"):
            assert name in SETTINGS_ENV, f"{where}: {name} is not a setting in workers/settings.py"
        elif name.startswith("FLOWER_"):
            assert flower, f"{where}: {name} set outside Flower"
            assert name in _flower_options(), f"{where}: {name} is not a Flower option"
        else:
            assert name in LIBRARY_ENV, f"{where}: {name} is neither an itx setting nor expected"


def _seconds(text: str) -> int:
    """Compose durations: 90s, 12m, 1h30m."""
    total, rest = 0, text
    for value, unit in re.findall(r"(\d+)(h|m|s)", text):
        total += int(value) * {"h": 3600, "m": 60, "s": 1}[unit]
        rest = rest.replace(value + unit, "", 1)
    assert not rest.strip(), f"cannot read duration {text!r}"
    return total


def _queues() -> set[str]:
    from workers.app import app

    routed = {r["queue"] for r in app.conf.task_routes.values()}
    declared = {q.name for q in app.conf.task_queues}
    assert routed == declared
    return declared


# --- Kubernetes ------------------------------------------------------------------------------
def filled(text: str) -> str:
    return text.replace("CHANGE-ME", "filled-in")


@cache
def k8s_tree() -> Path:
    """A copy of k8s/ whose gpu overlay has its git-ignored Secret inputs, filled in from the
    .example files, as an operator's checkout has them."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="itx-k8s-")) / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("secret.env", "redis-ca.pem"))
    for example in (root / "overlays" / "gpu").glob("*.example"):
        example.with_suffix("").write_text(filled(example.read_text()))
    ocr = root / "overlays" / "gpu-ocr"
    shutil.copytree(root / "overlays" / "gpu", ocr)
    k = ocr / "kustomization.yaml"
    text = k.read_text()
    assert "  - ../../components/autoscaling\n" in text
    k.write_text(text.replace("  - ../../components/autoscaling\n",
                              "  - ../../components/autoscaling\n  - ../../components/ocr-pool\n"))
    return root


@cache
def render(overlay: str) -> tuple[dict, ...]:
    kubectl = _need("kubectl")
    k8s = k8s_tree()
    path = k8s / "base" if overlay == "base" else k8s / "overlays" / overlay
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, f"kubectl kustomize {path}: {out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def objects(overlay: str, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def pod_containers(obj: dict) -> list[dict]:
    spec = obj["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def worker_container(deploy: dict) -> dict:
    (c,) = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    return c


def config_map(overlay: str) -> dict:
    (cm,) = [c for n, c in objects(overlay, "ConfigMap").items() if n.startswith("itx-config")]
    return cm["data"]


def secret_keys(overlay: str) -> set[str]:
    (secret,) = objects(overlay, "Secret").values()
    return set(secret.get("data", {})) | set(secret.get("stringData", {}))


def container_env(overlay: str, c: dict) -> dict[str, str]:
    """Every variable a container gets, with values where the manifests give them."""
    env = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(config_map(overlay))
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", "<from secret>")
    return env


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_kustomize_builds_and_every_object_validates(overlay):
    try:
        import kubernetes_validate as kv
    except ImportError:
        if _in_ci():
            pytest.fail("kubernetes-validate is not installed (the dev extra has it)")
        pytest.skip("kubernetes-validate is not installed (the dev extra has it)")
    keda = json.loads((REPO / "tests/schemas/keda-v1alpha1.json").read_text())
    docs = render(overlay)
    assert docs
    for obj in docs:
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("keda.sh/"):
            errors = list(jsonschema.Draft202012Validator(keda).iter_errors(obj))
            assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"
        else:
            try:
                kv.validate(obj, K8S_VERSION, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{where}: {e.message} at {list(e.path)}")


def test_keda_schema_rejects_what_keda_would():
    keda = json.loads((REPO / "tests/schemas/keda-v1alpha1.json").read_text())
    good = objects("gpu", "ScaledObject")["itx-light"]
    v = jsonschema.Draft202012Validator(keda)
    assert v.is_valid(good)
    bad = json.loads(json.dumps(good))
    bad["spec"]["triggers"][0]["metadata"]["listLength"] = 8  # KEDA metadata is strings only
    assert not v.is_valid(bad)
    bad = json.loads(json.dumps(good))
    del bad["spec"]["scaleTargetRef"]["name"]
    assert not v.is_valid(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["triggers"][0]["metadata"]["password"] = "in plain text"
    assert not v.is_valid(bad)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_env_var_is_a_setting_and_every_reference_resolves(overlay):
    cm_names = set(objects(overlay, "ConfigMap"))
    (secret_name,) = objects(overlay, "Secret")
    keys = secret_keys(overlay)
    itx = {n for n in objects(overlay, "Deployment") if n.startswith("itx-")}
    assert itx == {"itx-light", "itx-heavy", "itx-flower"} | (
        {"itx-ocr"} if overlay == "gpu-ocr" else set())
    check_env_names(config_map(overlay), f"{overlay} ConfigMap")
    for kind in ("Deployment", "Job"):
        for obj in objects(overlay, kind).values():
            for c in pod_containers(obj):
                where = f"{overlay} {obj['metadata']['name']}/{c['name']}"
                for src in c.get("envFrom", []):
                    assert src["configMapRef"]["name"] in cm_names, where
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] == secret_name, where
                        assert ref.get("optional") or ref["key"] in keys, \
                            f"{where}: secret key {ref['key']} missing in {overlay}"
                if c["image"].split("/")[-1].startswith("itx-"):
                    check_env_names([e["name"] for e in c.get("env", [])], where,
                                    flower=c["name"] == "flower")


def test_gpu_secret_template_has_exactly_the_keys_the_manifests_use():
    used = set()
    for obj in render("gpu"):
        text = json.dumps(obj)
        used |= set(re.findall(r'"key": "([A-Z][A-Z0-9_]*)"', text))
    template = {line.split("=", 1)[0] for line in
                (K8S / "overlays/gpu/secret.env.example").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    generated = {"REDIS_USERNAME", "REDIS_TLS"}  # literals in the kustomization
    assert template | generated == used
    # the rest are only the names of secret keys (KEDA's, Flower's, the init containers')
    check_env_names({k for k in template if not k.startswith(("REDIS_", "MODELS_AWS_"))}
                    - {"FLOWER_BASIC_AUTH"}, "gpu secret.env.example")


def test_contract_lines_extend_what_the_integration_tests_run():
    cluster = pytest.importorskip("cluster")  # tests/cluster.py: the processes the tests start
    assert WORKER_COMMANDS["light"].startswith(shlex.join(cluster.LIGHT_CMD) + " ")
    assert WORKER_COMMANDS["heavy"].startswith(shlex.join(cluster.HEAVY_CMD) + " ")
    assert FLOWER_COMMAND.startswith(shlex.join(cluster.FLOWER_CMD))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_and_flower_commands_are_the_contract_lines(overlay):
    deploys = objects(overlay, "Deployment")
    for q in ("light", "heavy"):
        assert shlex.join(worker_container(deploys[f"itx-{q}"])["command"]) == WORKER_COMMANDS[q]
    (flower,) = deploys["itx-flower"]["spec"]["template"]["spec"]["containers"]
    assert shlex.join(flower["command"]) == FLOWER_COMMAND
    # no other container runs a worker with some other line
    for d in deploys.values():
        for c in pod_containers(d):
            line = shlex.join(c.get("command", []) + c.get("args", []))
            if line.startswith("celery -A workers worker"):
                assert line in WORKER_COMMANDS.values(), line


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_periods_outlast_the_task_time_limits(overlay):
    deploys = objects(overlay, "Deployment")
    for q, setting in TIME_LIMIT_SETTING.items():
        if f"itx-{q}" not in deploys:
            continue  # the ocr pool is an optional component
        env = container_env(overlay, worker_container(deploys[f"itx-{q}"]))
        assert setting in env, f"{overlay}: set {setting} explicitly for the {q} pool"
        limit = int(env[setting])
        grace = deploys[f"itx-{q}"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > limit, f"{overlay} {q}: grace {grace} s <= time limit {limit} s"


def test_keda_scales_each_queue_on_its_own_list():
    queues = _queues()
    scaled = objects("gpu", "ScaledObject")
    deploys = objects("gpu", "Deployment")
    auths = objects("gpu", "TriggerAuthentication")
    keys = secret_keys("gpu")
    seen = set()
    for so in scaled.values():
        target = deploys[so["spec"]["scaleTargetRef"]["name"]]
        command = worker_container(target)["command"]
        queue = command[command.index("-Q") + 1]
        spec = so["spec"]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["maxReplicaCount"] >= 1
        assert spec.get("cooldownPeriod", 300) >= 60
        assert "replicas" not in target["spec"], "KEDA owns the replica count"
        for trig in spec["triggers"]:
            assert trig["type"] == "redis"
            assert trig["metadata"]["listName"] == queue and queue in queues
            auth = auths[trig["authenticationRef"]["name"]]
            params = {r["parameter"]: r["key"] for r in auth["spec"]["secretTargetRef"]}
            assert {"address", "password"} <= set(params) and set(params.values()) <= keys
        seen.add(queue)
    assert seen == queues
    assert not objects("dev", "ScaledObject"), "dev runs without KEDA"


def test_the_ocr_pool_component_routes_ocr_to_cpu_workers_scaled_on_its_queue():
    """components/ocr-pool: ITX_ROUTES=ocr=ocr for every pod, CPU workers on `-Q ocr`, a
    ScaledObject on the `ocr` list, its disruption budget and the workers' network policy."""
    from workers.app import queues
    from workers.settings import Settings

    cm = config_map("gpu-ocr")
    assert cm["ITX_ROUTES"] == "ocr=ocr" and "ITX_ROUTES" not in config_map("gpu")
    routed = queues(Settings(routes=cm["ITX_ROUTES"]))
    deploys = objects("gpu-ocr", "Deployment")
    ocr = deploys["itx-ocr"]
    assert shlex.join(worker_container(ocr)["command"]) == WORKER_COMMANDS["ocr"]
    assert "nvidia.com/gpu" not in json.dumps(ocr)
    for d in deploys.values():  # every pod reads the same config, routes included
        for c in pod_containers(d):
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"].startswith("itx-config-")
    scaled = {so["spec"]["triggers"][0]["metadata"]["listName"]:
              so["spec"]["scaleTargetRef"]["name"] for so in objects("gpu-ocr", "ScaledObject").values()}
    assert set(scaled) == set(routed) == {"light", "heavy", "ocr"}
    assert scaled["ocr"] == "itx-ocr"
    (policy,) = [p for p in objects("gpu-ocr", "NetworkPolicy").values()
                 if p["metadata"]["name"] == "itx-workers"]
    assert "ocr" in policy["spec"]["podSelector"]["matchExpressions"][0]["values"]
    mounts = {m["mountPath"] for m in worker_container(ocr)["volumeMounts"]}
    assert "/etc/itx/redis-ca" in mounts  # TLS to Redis, as the other workers


def test_gpus_only_in_the_gpu_overlay():
    assert "nvidia.com/gpu" not in json.dumps(render("base"))
    assert "nvidia.com/gpu" not in json.dumps(render("dev"))
    deploys = objects("gpu", "Deployment")
    for q in ("light", "heavy"):
        d = deploys[f"itx-{q}"]
        spec = d["spec"]["template"]["spec"]
        assert worker_container(d)["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert spec["nodeSelector"] == {"itx/pool": q}
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    flower = deploys["itx-flower"]
    assert "nvidia.com/gpu" not in json.dumps(flower)
    assert config_map("gpu")["ITX_DEVICE"] == "cuda"


def test_dev_is_cpu_tiny_random_one_replica_with_redis_and_minio_inside():
    cm = config_map("dev")
    assert (cm["ITX_PROFILE"], cm["ITX_DEVICE"]) == ("tiny-random", "cpu")
    deploys = objects("dev", "Deployment")
    assert {n: d["spec"].get("replicas") for n, d in deploys.items()} == {
        "itx-light": 1, "itx-heavy": 1, "itx-flower": 1, "redis": 1, "minio": 1}
    redis = shlex.join(deploys["redis"]["spec"]["template"]["spec"]["containers"][0]["command"])
    assert "--aclfile" in redis and "--appendonly yes" in redis
    assert "minio-init.sh" in json.dumps(objects("dev", "Job")["minio-bucket"])
    assert not {"redis", "minio"} & set(objects("gpu", "Deployment")), "gpu uses external ones"


def test_gpu_workers_pull_their_pools_models_from_the_store_first():
    cm = config_map("gpu")
    for q in ("light", "heavy"):
        spec = objects("gpu", "Deployment")[f"itx-{q}"]["spec"]["template"]["spec"]
        (init,) = spec["initContainers"]
        args = init["command"]
        assert args[:3] == ["itx", "models", "pull"]
        assert args[args.index("--from") + 1] == "$(ITX_MODELS_URI)"
        assert "ITX_MODELS_URI" in container_env("gpu", init)
        assert args[args.index("--pool") + 1] == q
        assert args[args.index("--to") + 1] == cm["ITX_MODEL_DIR"]
        worker = worker_container(objects("gpu", "Deployment")[f"itx-{q}"])
        mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
        init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        assert init_mounts["models"] == mounts["models"]
        assert mounts["models"] == cm["ITX_MODEL_DIR"]
        assert init["image"] == worker["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_cheap_and_read_the_heartbeat_file(overlay):
    assert config_map(overlay)["ITX_HEARTBEAT_FILE"] == HEARTBEAT_FILE
    for d in objects(overlay, "Deployment").values():
        for c in pod_containers(d):
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c.get(kind)
                if not probe:
                    continue
                assert "celery" not in json.dumps(probe), "no `celery inspect ping` probes"
                assert probe.get("periodSeconds", 10) >= 10
    for q in ("light", "heavy"):
        c = worker_container(objects(overlay, "Deployment")[f"itx-{q}"])
        for kind in ("startupProbe", "livenessProbe"):
            assert HEARTBEAT_FILE in " ".join(c[kind]["exec"]["command"])
        assert c["livenessProbe"]["periodSeconds"] >= 30
        assert "readinessProbe" not in c  # a worker serves no traffic


def test_heartbeat_probe_command_tells_fresh_from_stale(tmp_path):
    light = worker_container(objects("gpu", "Deployment")["itx-light"])
    cmd = light["livenessProbe"]["exec"]["command"]
    beat = tmp_path / "hb"
    local = [a.replace(HEARTBEAT_FILE, str(beat)) for a in cmd]
    assert subprocess.run(local, check=False).returncode != 0  # no file yet
    beat.touch()
    assert subprocess.run(local, check=False).returncode == 0
    old = time.time() - 180
    os.utime(beat, (old, old))
    assert subprocess.run(local, check=False).returncode != 0


def test_worker_touches_the_heartbeat_file_on_each_heartbeat(tmp_path, monkeypatch):
    """workers/app.py connects a `heartbeat_sent` handler that touches ITX_HEARTBEAT_FILE: the
    probes above read its age."""
    from celery.signals import heartbeat_sent

    from workers.settings import reset_settings

    beat = tmp_path / "hb"
    monkeypatch.setenv("ITX_HEARTBEAT_FILE", str(beat))
    reset_settings()
    try:
        import workers.app  # noqa: F401  (connects the handler)

        assert heartbeat_sent.receivers, "no heartbeat_sent handler in workers/app.py"
        heartbeat_sent.send(sender=None)
        assert beat.is_file()
        old = time.time() - 600
        os.utime(beat, (old, old))
        heartbeat_sent.send(sender=None)
        assert time.time() - beat.stat().st_mtime < 60
    finally:
        monkeypatch.delenv("ITX_HEARTBEAT_FILE")
        reset_settings()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_limits_and_runs_as_non_root(overlay):
    for kind in ("Deployment", "Job"):
        for obj in objects(overlay, kind).values():
            spec = obj["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
            for c in pod_containers(obj):
                res = c["resources"]
                for part in ("requests", "limits"):
                    where = f"{obj['metadata']['name']}/{c['name']}"
                    assert {"cpu", "memory"} <= set(res[part]), where
                assert c["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdbs_cover_every_itx_deployment(overlay):
    pdbs = objects(overlay, "PodDisruptionBudget").values()
    for name in ("itx-light", "itx-heavy", "itx-flower"):
        labels = objects(overlay, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in pdbs
                    if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, name
        assert "minAvailable" not in matching[0]["spec"]  # a 1-replica minAvailable blocks drains


def test_flower_has_authentication_and_a_service():
    for overlay in OVERLAYS:
        deploy = objects(overlay, "Deployment")["itx-flower"]
        (flower,) = deploy["spec"]["template"]["spec"]["containers"]
        assert "FLOWER_BASIC_AUTH" in {e["name"] for e in flower["env"]}
        svc = objects(overlay, "Service")["itx-flower"]
        assert svc["spec"]["type"] == "ClusterIP"  # reached by port-forward or your ingress


def test_flower_imports_no_torch():
    """Flower runs in the orchestrator image, which has no torch: importing the app and the
    modules Flower loads (the task modules) must not import it."""
    code = ("import sys; from workers.app import app; app.loader.import_default_modules(); "
            "sys.exit(sorted(m for m in ('torch', 'transformers', 'diffusers', 'easyocr') "
            "if m in sys.modules) or 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:] or r.stdout


# --- compose -----------------------------------------------------------------------------------
@cache
def compose(*files: str) -> dict:
    exe = _need("docker-compose")
    args = [exe, "--env-file", str(REPO / ".env.example")]
    for f in files:
        args += ["-f", str(DOCKER / f)]
    out = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=120,
                         cwd=DOCKER, check=False)
    assert out.returncode == 0, f"docker-compose config: {out.stderr}"
    return yaml.safe_load(out.stdout)


def _cmd(service: dict) -> str:
    c = service["command"]
    return c if isinstance(c, str) else shlex.join(c)


def _has_gpu(service: dict) -> bool:
    return "nvidia" in json.dumps(service.get("deploy", {}))


def _active(stack: dict) -> dict:
    """The services `up` starts (no profile, as in compose.yaml's default)."""
    return {n: s for n, s in stack["services"].items() if not s.get("profiles")}


def test_compose_gpu_stack_keeps_the_contract():
    s = compose("compose.yaml")["services"]
    assert set(s) == {"redis", "minio", "minio-init", "models", "light", "heavy", "flower",
                      "orchestrator"}
    for q in ("light", "heavy"):
        assert _cmd(s[q]) == WORKER_COMMANDS[q]
        assert _has_gpu(s[q])
        limit = int(s[q]["environment"][TIME_LIMIT_SETTING[q]])
        assert _seconds(s[q]["stop_grace_period"]) > limit
        assert {"redis", "minio-init", "models"} <= set(s[q]["depends_on"])
        assert s[q]["depends_on"]["models"]["condition"] == "service_completed_successfully"
    assert sorted(n for n, svc in s.items() if _has_gpu(svc)) == ["heavy", "light"]
    assert _cmd(s["flower"]) == FLOWER_COMMAND
    assert s["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    redis = _cmd(s["redis"])
    assert "--aclfile" in redis and "--appendonly yes" in redis
    assert "minio-init.sh" in _cmd({"command": s["minio-init"]["entrypoint"]})
    assert s["orchestrator"]["restart"] == "no" and _cmd(s["orchestrator"]).startswith("itx ")
    assert s["models"]["restart"] == "no" and _cmd(s["models"]).startswith("itx models pull")
    for name, svc in s.items():
        env = svc.get("environment", {})
        if svc.get("image", "").startswith("itx-"):
            check_env_names(env, f"compose {name}", flower=name == "flower")
        else:
            assert not [k for k in env if k.startswith("ITX_")], name


def test_compose_cpu_stack_runs_without_gpus_on_tiny_random():
    gpu = compose("compose.yaml")["services"]
    s = compose("compose.yaml", "compose.cpu.yaml")["services"]
    active = _active(compose("compose.yaml", "compose.cpu.yaml"))
    assert {"light-cpu", "heavy-cpu", "redis", "minio", "minio-init", "models",
            "flower"} <= set(active)
    assert not [n for n, svc in active.items() if _has_gpu(svc)]
    for q in ("light", "heavy"):
        cpu = s[f"{q}-cpu"]
        assert _cmd(cpu) == WORKER_COMMANDS[q]
        assert cpu["build"]["target"] == q
        assert cpu["build"]["args"]["CUDA_IMAGE"].startswith("ubuntu")
        # the CPU workers copy compose.yaml's settings but for profile and device
        same = {k: v for k, v in gpu[q]["environment"].items()
                if k not in ("ITX_PROFILE", "ITX_DEVICE")}
        assert {k: v for k, v in cpu["environment"].items() if k in same} == same
        assert set(cpu["environment"]) == set(gpu[q]["environment"])
        assert cpu["stop_grace_period"] == gpu[q]["stop_grace_period"]
        assert cpu["depends_on"] == gpu[q]["depends_on"]
    for name in ("light-cpu", "heavy-cpu", "models", "flower", "orchestrator"):
        assert s[name]["environment"]["ITX_PROFILE"] == "tiny-random", name
    assert "tiny-random" in _cmd(s["models"])


def test_compose_refuses_to_start_without_passwords(tmp_path):
    exe = _need("docker-compose")
    empty = tmp_path / "empty.env"
    empty.write_text("")
    out = subprocess.run([exe, "--env-file", str(empty), "-f", str(DOCKER / "compose.yaml"),
                          "config"],
                         capture_output=True, text=True, cwd=DOCKER, timeout=120, check=False)
    assert out.returncode != 0 and "REDIS_PASSWORD" in out.stderr


# --- Dockerfile ------------------------------------------------------------------------------
def dockerfile_stages() -> dict[str, dict]:
    """Stage name -> {"from": parent, "lines": [instruction lines]} (continuations joined)."""
    text = (DOCKER / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if m:
            current = stages[m.group(2)] = {"from": m.group(1), "lines": []}
        elif current is not None:
            current["lines"].append(line)
    return stages


def stage_chain(stages: dict, name: str) -> list[str]:
    """Instruction lines of a target with those of the stages it builds on, in order."""
    chain = []
    while name in stages:
        chain = stages[name]["lines"] + chain
        name = stages[name]["from"]
    return chain


def test_dockerfile_targets_users_and_commands():
    stages = dockerfile_stages()
    assert {"orchestrator", "light", "heavy"} <= set(stages)
    text = (DOCKER / "Dockerfile").read_text()
    assert stages["worker-base"]["from"] == "${CUDA_IMAGE}"
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-cudnn-runtime-ubuntu\S+$", text,
                     re.MULTILINE)
    for target in ("orchestrator", "light", "heavy"):
        users = [ln.split()[1] for ln in stage_chain(stages, target) if ln.startswith("USER ")]
        assert users, f"{target}: no USER"
        assert users[-1].split(":")[0] not in ("root", "0"), f"{target} runs as root"
    for q in ("light", "heavy"):
        chain = stage_chain(stages, q)
        (cmd,) = [ln for ln in stages[q]["lines"] if ln.startswith("CMD ")]
        assert shlex.join(json.loads(cmd[4:])) == WORKER_COMMANDS[q]
        assert any('".[worker]"' in ln for ln in chain if ln.startswith("RUN "))
        env = " ".join(ln for ln in chain if ln.startswith("ENV "))
        names = re.findall(r"\b([A-Z][A-Z0-9_]+)=", env)
        check_env_names([n for n in names if n.startswith(("ITX_", "FLOWER_"))], f"Dockerfile {q}")
        assert f"ITX_HEARTBEAT_FILE={HEARTBEAT_FILE}" in env
        (health,) = [ln for ln in chain if ln.startswith("HEALTHCHECK ")]
        assert HEARTBEAT_FILE in health


def test_orchestrator_image_installs_no_torch():
    stages = dockerfile_stages()
    runs = " ".join(ln for ln in stage_chain(stages, "orchestrator") if ln.startswith("RUN "))
    assert "pip install" in runs and "[worker]" not in runs and "torch" not in runs
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    heavy = ("torch", "torchvision", "transformers", "diffusers", "accelerate", "easyocr")
    names = [re.split(r"[\[<>=~! ;]", d, maxsplit=1)[0].lower() for d in deps]
    assert not set(names) & set(heavy), "the base dependencies pull torch into the orchestrator"


def test_dockerignore_keeps_the_context_small_and_complete():
    rules = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]

    def regex(pattern: str) -> re.Pattern:  # Docker's rules: ** any folders, * within one
        out = ""
        for part in re.split(r"(\*\*/|\*|\?)", pattern):
            out += {"**/": "(.*/)?", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return re.compile(out + "$")

    def ignored(path: str) -> bool:
        """Last matching rule wins; a rule matches a path or any folder above it."""
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        out = False
        for rule in rules:
            rx = regex(rule.lstrip("!").rstrip("/"))
            if any(rx.match(p) for p in prefixes):
                out = not rule.startswith("!")
        return out

    copied = re.findall(r"^COPY\s+(.+?)\s+\S+$", (DOCKER / "Dockerfile").read_text(), re.MULTILINE)
    sources = [s for line in copied for s in line.split()]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"the Dockerfile copies {src}, which does not exist"
        assert not ignored(src.rstrip("/")), f".dockerignore drops {src}, which is COPYed"
    for path in (".venv/bin/python", ".git/HEAD", ".itx-models/tiny-random/sd/x", "tests/test_x.py",
                 "workers/__pycache__/app.cpython-311.pyc", "itx-store/runs/x.json", ".env"):
        assert ignored(path), f"{path} would be sent to the Docker daemon"


# --- security (docs/security.md) -----------------------------------------------------------
POLICIES = K8S / "components" / "s3-policies"
DNS_PORTS, REDIS_PORTS, S3_PORTS = {53}, {6379, 6380}, {443, 9000}


def _decoded_secret(overlay: str) -> dict[str, str]:
    import base64

    (secret,) = objects(overlay, "Secret").values()
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def test_gpu_secret_inputs_are_examples_in_git_and_the_real_files_are_ignored():
    tracked = subprocess.run(["git", "ls-files", "k8s/overlays/gpu"], capture_output=True,
                             text=True, cwd=REPO, check=True).stdout.split()
    assert "k8s/overlays/gpu/secret.env.example" in tracked
    assert "k8s/overlays/gpu/redis-ca.pem.example" in tracked
    for real in ("k8s/overlays/gpu/secret.env", "k8s/overlays/gpu/redis-ca.pem"):
        assert real not in tracked
        ignored = subprocess.run(["git", "check-ignore", "-q", real], cwd=REPO, check=False)
        assert ignored.returncode == 0, f"{real} is not git-ignored"


def test_building_the_gpu_overlay_with_change_me_left_fails_in_one_line(tmp_path):
    check = [sys.executable, str(REPO / "scripts" / "check_overlay_secrets.py")]
    tree = tmp_path / "k8s"
    shutil.copytree(k8s_tree(), tree)
    gpu = tree / "overlays" / "gpu"

    def run():
        r = subprocess.run([*check, str(gpu)], capture_output=True, text=True, check=False)
        return r.returncode, r.stderr.strip()

    for p in (gpu / "secret.env", gpu / "redis-ca.pem"):
        p.unlink()
    rc, err = run()
    assert rc == 1 and len(err.splitlines()) == 1 and "redis-ca.pem: missing" in err, err
    for example in gpu.glob("*.example"):  # copied, nothing filled in
        shutil.copy(example, example.with_suffix(""))
    rc, err = run()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert "redis-ca.pem:1" in err, err  # the CA is still the placeholder
    (gpu / "redis-ca.pem").write_text(filled((gpu / "redis-ca.pem").read_text()))
    rc, err = run()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert "ITX_BROKER_URL still has CHANGE-ME" in err, err
    (gpu / "secret.env").write_text(filled((gpu / "secret.env").read_text()))
    assert run() == (0, "")
    # and the checkout itself (no real secret.env) does not pass
    rc, err = subprocess.run([*check, str(K8S / "overlays" / "gpu")], capture_output=True,
                             text=True, check=False).returncode, ""
    assert rc == 1


def _selects(policy: dict, labels: dict) -> bool:
    sel = policy["spec"]["podSelector"]
    if not sel:
        return True
    ok = all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items())
    for e in sel.get("matchExpressions", []):
        assert e["operator"] == "In"
        ok &= labels.get(e["key"]) in e["values"]
    return ok


def _ports(rule: dict) -> set[int]:
    return {p["port"] for p in rule.get("ports", [])}


def _is_dns(rule: dict) -> bool:
    to = rule.get("to") or [{}]
    return (len(to) == 1 and to[0].get("namespaceSelector", {}).get("matchLabels") ==
            {"kubernetes.io/metadata.name": "kube-system"}
            and to[0].get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"}
            and _ports(rule) == DNS_PORTS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_allow_only_dns_redis_s3(overlay):
    pols = objects(overlay, "NetworkPolicy")
    deny = pols["itx-default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny.get("ingress") and not deny.get("egress")
    deploys = objects(overlay, "Deployment")
    for q in ("light", "heavy"):
        labels = deploys[f"itx-{q}"]["spec"]["template"]["metadata"]["labels"]
        (mine,) = [p for n, p in pols.items() if n != "itx-default-deny" and _selects(p, labels)]
        spec = mine["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"} and not spec.get("ingress")
        egress = spec["egress"]
        assert sum(_is_dns(r) for r in egress) == 1
        others = [r for r in egress if not _is_dns(r)]
        for r in others:  # each rule is Redis or S3, never a port more
            assert _ports(r) and (_ports(r) <= REDIS_PORTS or _ports(r) <= S3_PORTS), r
        assert set().union(*map(_ports, others)) <= REDIS_PORTS | S3_PORTS
        assert set().union(*map(_ports, others)) & REDIS_PORTS
        assert set().union(*map(_ports, others)) & S3_PORTS
    labels = deploys["itx-flower"]["spec"]["template"]["metadata"]["labels"]
    (flower,) = [p for n, p in pols.items() if n != "itx-default-deny" and _selects(p, labels)]
    (ing,) = flower["spec"]["ingress"]
    (src,) = ing["from"]
    assert set(src) == {"namespaceSelector"}, "Flower: one named namespace, nothing else"
    assert set(src["namespaceSelector"]["matchLabels"]) == {"kubernetes.io/metadata.name"}
    assert _ports(ing) == {5555}
    egress = flower["spec"]["egress"]
    assert sum(_is_dns(r) for r in egress) == 1
    assert set().union(*(_ports(r) for r in egress if not _is_dns(r))) <= REDIS_PORTS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_and_init_containers_are_locked_down(overlay):
    classes = objects(overlay, "PriorityClass")
    for q in ("light", "heavy"):
        d = objects(overlay, "Deployment")[f"itx-{q}"]
        spec = d["spec"]["template"]["spec"]
        assert spec["priorityClassName"] in classes
        assert classes[spec["priorityClassName"]].get("preemptionPolicy") == "Never"
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in pod_containers(d):
            where = f"{overlay} {q}/{c['name']}"
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert "ephemeral-storage" in c["resources"]["requests"], where
            for m in c["volumeMounts"]:
                v = volumes[m["name"]]
                assert "emptyDir" in v or m.get("readOnly"), f"{where}: {m} writable, not emptyDir"
            assert "/home/itx/.cache" in {m["mountPath"] for m in c["volumeMounts"]}, where
        for c in spec.get("initContainers", []):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("NVIDIA_VISIBLE_DEVICES") == "void", c["name"]
    if overlay == "gpu":
        assert all(objects("gpu", "Deployment")[f"itx-{q}"]["spec"]["template"]["spec"]
                   .get("initContainers") for q in ("light", "heavy"))


def test_gpu_overlay_talks_tls_to_redis_by_default():
    example = dict(ln.split("=", 1) for ln in
                   (K8S / "overlays/gpu/secret.env.example").read_text().splitlines()
                   if ln.strip() and not ln.startswith("#"))
    for k in ("ITX_BROKER_URL", "ITX_RESULT_BACKEND", "REDIS_FLOWER_BROKER_URL",
              "REDIS_FLOWER_RESULT_BACKEND"):
        assert example[k].startswith("rediss://"), k
    cm = config_map("gpu")
    assert cm["ITX_REDIS_SSL_CERT_REQS"] == "required"
    ca_dir = cm["ITX_REDIS_SSL_CA_CERTS"].rsplit("/", 1)[0]
    secret = _decoded_secret("gpu")
    assert secret["redis-ca.pem"] and secret["REDIS_TLS"] == "enable"
    for name, cname in (("itx-light", "worker"), ("itx-heavy", "worker"), ("itx-flower", "flower")):
        spec = objects("gpu", "Deployment")[name]["spec"]["template"]["spec"]
        (c,) = [c for c in spec["containers"] if c["name"] == cname]
        assert container_env("gpu", c)["ITX_REDIS_SSL_CA_CERTS"] == cm["ITX_REDIS_SSL_CA_CERTS"]
        (m,) = [m for m in c["volumeMounts"] if m["mountPath"] == ca_dir]
        vol = {v["name"]: v for v in spec["volumes"]}[m["name"]]
        assert vol["secret"]["items"] == [{"key": "redis-ca.pem", "path": "ca.pem"}]
    (auth,) = objects("gpu", "TriggerAuthentication").values()
    params = {r["parameter"]: r["key"] for r in auth["spec"]["secretTargetRef"]}
    assert secret[params["tls"]] == "enable" and params["ca"] == "redis-ca.pem"
    assert secret[params["username"]] == "itx-keda"


def test_gpu_workers_get_s3_through_workload_identity_with_static_keys_as_fallback():
    (sa,) = objects("gpu", "ServiceAccount").values()
    ann = sa["metadata"]["annotations"]
    assert ann["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert ann["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    for q in ("light", "heavy"):
        d = objects("gpu", "Deployment")[f"itx-{q}"]
        assert d["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
        for c in pod_containers(d):
            refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env", [])
                    if "secretKeyRef" in e.get("valueFrom", {})}
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert refs[k].get("optional") is True, (q, c["name"], k)
            if c["name"] == "models":  # the init container's keys: models/ read-only
                assert refs["AWS_ACCESS_KEY_ID"]["key"] == "MODELS_AWS_ACCESS_KEY_ID"


def _grants(policy: dict) -> dict[str, set[str]]:
    """action -> resources it is allowed on."""
    out: dict[str, set[str]] = {}
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        for a in st["Action"]:
            assert "*" not in a, f"wildcard action {a}"
            for r in st["Resource"]:
                assert r.startswith("arn:aws:s3:::BUCKET"), r
                out.setdefault(a, set()).add(r.removeprefix("arn:aws:s3:::BUCKET"))
    return out


def test_s3_policies_give_each_role_only_its_prefixes():
    pol = {p.stem: _grants(json.loads(p.read_text())) for p in POLICIES.glob("*.json")}
    assert set(pol) == {"worker", "models-init", "models-push", "submitter"}
    w = pol["worker"]
    assert w["s3:GetObject"] == {"/itx/inputs/*", "/models/*", "/itx/runs/*"}
    assert w["s3:PutObject"] == {"/itx/runs/*"}
    assert set(w) == {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListBucket"}
    assert pol["models-init"] == {"s3:GetObject": {"/models/*"}, "s3:ListBucket": {""}}
    writers = {role for role, g in pol.items()
               if any(r.startswith("/models/") for r in g.get("s3:PutObject", ()))}
    assert writers == {"models-push"}
    assert not any(r.startswith("/models") for a in pol["submitter"].values() for r in a)
    for role, g in pol.items():
        assert not {"s3:DeleteObject", "s3:PutBucketPolicy"} & set(g), role


def test_no_deployment_runs_workers_as_the_stores_root_user():
    s = compose("compose.yaml")["services"]
    root = s["minio"]["environment"]["MINIO_ROOT_USER"]
    for name in ("light", "heavy", "orchestrator"):
        assert s[name]["environment"]["AWS_ACCESS_KEY_ID"] not in (root, ""), name
    assert s["light"]["environment"]["AWS_ACCESS_KEY_ID"] == "itx-worker"
    assert s["orchestrator"]["environment"]["AWS_ACCESS_KEY_ID"] == "itx-submitter"
    init = (POLICIES / "minio-init.sh").read_text()
    assert "admin user add" in init and "admin policy attach" in init
    assert "/policies" in json.dumps(s["minio-init"]["volumes"])
    cpu = compose("compose.yaml", "compose.cpu.yaml")["services"]
    assert cpu["light-cpu"]["environment"]["AWS_ACCESS_KEY_ID"] == "itx-worker"
    dev = _decoded_secret("dev")
    assert dev["AWS_ACCESS_KEY_ID"] != dev["MINIO_ROOT_USER"]
    minio = objects("dev", "Deployment")["minio"]["spec"]["template"]["spec"]["containers"][0]
    root_key = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in minio["env"]
                if "valueFrom" in e}["MINIO_ROOT_USER"]
    for q in ("light", "heavy"):
        c = worker_container(objects("dev", "Deployment")[f"itx-{q}"])
        keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"]
                if "valueFrom" in e}
        assert keys["AWS_ACCESS_KEY_ID"] != root_key


def _user(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).username or "default"


def test_every_role_has_its_own_redis_user_in_every_deployment():
    acl = (K8S / "components" / "redis-acl" / "users.acl").read_text()
    users = {ln.split()[1] for ln in acl.splitlines() if ln.startswith("user ")}
    assert users == {"default", "itx-worker", "itx-submitter", "itx-flower", "itx-keda"}
    s = compose("compose.yaml")["services"]
    for name, user in (("light", "itx-worker"), ("heavy", "itx-worker"),
                       ("flower", "itx-flower"), ("orchestrator", "itx-submitter")):
        for k in ("ITX_BROKER_URL", "ITX_RESULT_BACKEND"):
            assert _user(s[name]["environment"][k]) == user, (name, k)
    assert "redis-acl" in json.dumps(s["redis"]["volumes"])
    dev = _decoded_secret("dev")
    for overlay, secret in (("dev", dev), ("gpu", _decoded_secret("gpu"))):
        for name, cname, user in (("itx-light", "worker", "itx-worker"),
                                  ("itx-flower", "flower", "itx-flower")):
            spec = objects(overlay, "Deployment")[name]["spec"]["template"]["spec"]
            (c,) = [c for c in spec["containers"] if c["name"] == cname]
            keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"]
                    if "valueFrom" in e}
            assert _user(secret[keys["ITX_BROKER_URL"]]) == user, (overlay, name)
    redis = objects("dev", "Deployment")["redis"]["spec"]["template"]["spec"]
    assert "itx-redis-acl" in json.dumps(redis["volumes"])
    assert _decoded_secret("gpu")["REDIS_USERNAME"] == "itx-keda"


def test_flower_is_pinned_past_its_csrf_fixes_and_documented_behind_oauth():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"flower>=2\.2[",]', text)
    assert re.search(r'"flower>=2\.2', (DOCKER / "Dockerfile").read_text())
    doc = (REPO / "docs" / "security.md").read_text()
    assert "oauth2-proxy" in doc
