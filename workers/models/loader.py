"""One loader for every backend: a ref becomes a local directory that ``from_pretrained`` reads.

First the ref must be one the operator allows (``workers.models.trust.check_allowed``:
``ITX_ALLOWED_MODELS``; local paths only inside ``ITX_MODEL_DIR`` or ``ITX_MODEL_ROOTS``, never
relative to the current directory), else ``ModelNotAllowedError``. Resolution order:
  ``builtin``            -> returned as is (weights ship with a package or the OS)
  ``tiny-random/<name>`` -> ``$ITX_MODEL_DIR/tiny-random/<name>``, built on first use
  an absolute path       -> that path
  ``$ITX_MODEL_DIR/<ref>`` (what ``itx models pull`` writes) -> that directory
  a hub id in the local Hugging Face cache -> its snapshot
  a hub id, hub reachable -> downloaded into the Hugging Face cache
(``org/name@REVISION`` pins a hub revision: a commit hash, tag or branch) otherwise
``ModelMissingError`` naming the model and the fix, within seconds. A directory with pickled
weights and no safetensors is refused unless ``ITX_ALLOW_PICKLE=true``.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from workers.models.errors import ModelMissingError
from workers.settings import get_settings

TINY_PREFIX = "tiny-random/"
# refs that name weights `itx models pull` fetches from elsewhere than the HF hub
NOT_ON_HUB = ("easyocr/",)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def missing(ref: str, why: str = "") -> ModelMissingError:
    profile = get_settings().profile
    return ModelMissingError(
        f"model {ref!r} is not on this machine{why} and the model hub cannot be reached. "
        f"Fix: run `itx models pull --profile {profile}` where the hub is reachable "
        f"(or `itx models pull --from s3://…` from your own store) into ITX_MODEL_DIR, "
        f"or use `--profile tiny-random` for an offline smoke run."
    )


def resolve_model(ref: str, model_dir: Path | None = None) -> str:
    from workers.models.trust import check_allowed, check_weights, is_local, split_revision

    model_dir = Path(model_dir or get_settings().model_dir)
    check_allowed(ref, extra_roots=[model_dir])
    if ref == "builtin":
        return ref
    if ref.startswith(TINY_PREFIX):
        from workers.models.tiny import build

        return str(build(ref[len(TINY_PREFIX):], model_dir))
    if is_local(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            raise missing(ref, f" ({path} does not exist)")
        check_weights(path)
        return str(path)
    pulled = model_dir / ref
    if pulled.exists():
        check_weights(pulled)
        return str(pulled)
    if ref.startswith(NOT_ON_HUB):
        raise missing(ref, f" (looked in {pulled})")
    repo, revision = split_revision(ref)
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo, revision=revision, local_files_only=True)
    except Exception:
        path = None
    if path is None:
        if not _hub_reachable():
            raise missing(ref)
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo, revision=revision)
    check_weights(path)
    return path


def needed_models(spec) -> list[tuple[str, str, str]]:
    """(stage, backend, ref) for every model a resolved PipelineSpec will load."""
    need = [("ocr", spec.ocr)] if spec.ocr else []
    need += [("caption", c) for c in spec.captioners or []]
    if spec.vqa and spec.vqa_backend:
        need.append(("vqa", spec.vqa_backend))
    if spec.generator:
        need.append(("generate", spec.generator))
    if getattr(spec, "scorer", None):  # --score or caption_for_prompt=best
        need.append(("score", spec.scorer))
    return [(stage, name, spec.model_ref(stage, name)) for stage, name in need]


def preflight(spec) -> list[tuple[str, str, str]]:
    """Resolve every model the spec needs before any work starts (fails fast and clearly)."""
    from workers.stages import table

    need = needed_models(spec)
    for stage, name, ref in need:
        table.get(stage, name)
        resolve_model(ref)
    return need
