"""Model distribution: so that a cluster downloads weights from its own store, not from a hub.

    itx models pull --profile base --to DIR            hub -> DIR (and EasyOCR's weights)
    itx models push DIR s3://bucket/models             DIR -> store, with MANIFEST.json
    itx models pull --from s3://bucket/models --to DIR store -> DIR, every file checked

A model set in a store is a tree that mirrors ``ITX_MODEL_DIR`` (``<ref>/<file>``, e.g.
``Salesforce/blip-image-captioning-base/model.safetensors``, ``easyocr/en/craft_mlt_25k.pth``,
``tiny-random/sd/unet/…``) plus ``MANIFEST.json``, which lists every file with its size and
sha256. ``push`` writes the manifest last, so a set whose manifest is there is complete;
``pull`` reads the manifest first, downloads each file to a temporary name beside its target,
checks its sha256 and only then renames it into place. A file already present with the right
checksum is not downloaded again, so an interrupted pull resumes and a repeated one is cheap.
The manifest itself is trusted through its sha256, which ``push`` reports and the operator
pins in ``ITX_MODELS_MANIFEST_SHA256``: with a pin, a manifest with other bytes (someone swapped
a file *and* its checksum) is refused before anything is downloaded.
Transfers run in a thread pool; large files go up and down in parts (boto3's managed transfer).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from workers.models.loader import TINY_PREFIX
from workers.models.profiles import default_backends, models as profile_models
from workers.stages import table
from workers.storage import FileStore, NotFoundError, S3Store, Store, StoreError, open_store

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
MANIFEST_VERSION = 1
POOLS = (table.LIGHT, table.HEAVY)
# not weights: left behind by downloads and atomic builds, never pushed
_SKIP_SUFFIXES = (".lock", ".incomplete", ".part", ".tmp")
_MiB = 1024 * 1024
_COUNT_LOCK = threading.Lock()


class DistributionError(RuntimeError):
    """A model set could not be pushed or pulled; the message says which and what to do."""


class ChecksumError(DistributionError):
    """A downloaded file does not match the sha256 that the manifest records for it."""


@dataclass
class Transfer:
    """What a push or pull did."""
    files: int = 0        # files in the set (or the selected part of it)
    transferred: int = 0  # files actually uploaded / downloaded
    skipped: int = 0      # already there with the right checksum
    bytes: int = 0        # bytes actually moved
    not_in_set: list[str] = field(default_factory=list)  # optional models the set lacks
    manifest_sha256: str = ""  # of MANIFEST.json as written or read: ITX_MODELS_MANIFEST_SHA256

    def add(self, transferred: bool, nbytes: int = 0) -> None:
        with _COUNT_LOCK:
            if transferred:
                self.transferred += 1
                self.bytes += nbytes
            else:
                self.skipped += 1

    def __str__(self) -> str:
        text = (f"{self.files} files: {self.transferred} transferred "
                f"({self.bytes / _MiB:.1f} MiB), {self.skipped} already up to date")
        if self.not_in_set:
            text += f"; not in the set (optional): {', '.join(self.not_in_set)}"
        if self.manifest_sha256:
            text += f"; MANIFEST.json sha256 {self.manifest_sha256} (ITX_MODELS_MANIFEST_SHA256)"
        return text


@dataclass
class HubPull:
    """What a hub pull fetched, and the optional models it could not (ref -> why)."""
    pulled: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


# --- which models ----------------------------------------------------------------------------
def profile_refs(profile: str, pool: str | None = None) -> list[str]:
    """The model refs a profile names (``builtin`` ones ship with a package, so none), for every
    stage or only those of one worker pool."""
    if pool is not None and pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
    routes = table.routes()  # which pool runs each backend (the table's, or ITX_ROUTES)
    refs = {ref for key, ref in profile_models(profile).items()
            if ref != "builtin" and (pool is None or routes[key] == pool)}
    return sorted(refs)


def required_refs(profile: str, pool: str | None = None) -> list[str]:
    """The refs that the profile's default pipeline loads: its OCR backend, captioners and
    generator, and VQA (one backend). The others (e.g. DeepFloyd IF, gated on the hub) are
    optional: a pull that cannot get them warns and goes on."""
    refs = profile_models(profile)
    keys = {f"{stage}:{name}" for stage, name in default_backends(profile)}
    return sorted({ref for key, ref in refs.items() if key in keys}
                  & set(profile_refs(profile, pool)))


_HUB_IGNORE = (
    "*.ckpt", "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.tflite", "*.pb",
    "*.mlmodel", "*.mlpackage/*", "*flax_model*", "*tf_model*", "*rust_model*",
    "onnx/*", "openvino/*", "coreml/*", "*.non_ema.*", "*.non_ema-*",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def select_hub_files(files: Iterable[str]) -> list[str]:
    """The files of a hub repository that ``from_pretrained`` needs for PyTorch inference.

    Drops other frameworks' weights (TF, Flax, ONNX, Core ML, …), training-only EMA splits,
    a diffusers repository's top-level single-file checkpoints (several GB each, unused by
    ``DiffusionPipeline.from_pretrained``) and ``.bin`` weights in a folder that has the same
    weights as safetensors. Half-precision ``variant`` files are kept: a backend may ask for them.
    """
    files = [f for f in files if not any(fnmatchcase(f, p) for p in _HUB_IGNORE)]
    diffusers_repo = "model_index.json" in files

    def folder(f: str) -> str:
        return f.rsplit("/", 1)[0] if "/" in f else ""

    def is_variant(name: str) -> bool:  # model.fp16.safetensors, model.fp16-00001-of-00002.…
        stem = name.split(".safetensors")[0]
        return "." in stem

    has_safetensors = {folder(f) for f in files
                       if f.endswith(".safetensors") and not is_variant(f.rsplit("/", 1)[-1])}
    keep = []
    for f in files:
        top_level_weight = "/" not in f and f.endswith(_WEIGHT_SUFFIXES)
        if diffusers_repo and top_level_weight:
            continue
        if folder(f) in has_safetensors and f.endswith((".bin", ".pt", ".pth", ".bin.index.json")):
            continue
        keep.append(f)
    return sorted(keep)


# --- hub -> local directory --------------------------------------------------------------------
def pull_models_from_hub(profile: str, dest_dir: str | Path, *, pool: str | None = None,
                         strict: bool = False, workers: int = 8) -> HubPull:
    """Download every model of ``profile`` (or of one ``pool``'s stages) into ``dest_dir/<ref>``,
    where the loader looks for them (``$ITX_MODEL_DIR/<ref>``).

    Hub models go through ``huggingface_hub.snapshot_download`` (only the files PyTorch
    inference needs; ``HF_TOKEN`` for gated ones), EasyOCR's weights through EasyOCR's own
    downloader, and ``tiny-random/*`` models are built locally (no network at all).
    A model the default pipeline needs (``required_refs``) that cannot be fetched is an error
    once the others are done; an optional one is skipped with its reason (``strict``: error).
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    required = set(required_refs(profile, pool))
    result, failed = HubPull(), {}
    for ref in profile_refs(profile, pool):
        target = dest_dir / ref
        try:
            if ref.startswith(TINY_PREFIX):
                from workers.models.tiny import build

                result.pulled.append(build(ref[len(TINY_PREFIX):], dest_dir))
            elif ref.startswith("easyocr/"):
                result.pulled.append(_easyocr(ref, target))
            else:
                result.pulled.append(_snapshot(ref, target, workers))
        except DistributionError as e:
            if strict or ref in required:
                failed[ref] = str(e)
            else:
                result.skipped[ref] = str(e)
                log.warning("skipped optional model %s: %s", ref, e)
            continue
        log.info("pulled %s -> %s", ref, target)
    if failed:
        raise DistributionError("\n".join(failed.values()))
    return result


def _easyocr(ref: str, target: Path) -> Path:
    from workers.stages.ocr.easyocr import pull_easyocr

    try:
        return Path(pull_easyocr(target, lang=ref.split("/", 1)[1]))
    except Exception as e:  # EasyOCR's downloader raises whatever urllib raises
        raise DistributionError(
            f"could not download EasyOCR's weights for {ref!r} ({type(e).__name__}: {e}). "
            f"Run this where EasyOCR's download site is reachable, or pull from your own "
            f"store: `itx models pull --from s3://…`.") from e


def _snapshot(ref: str, target: Path, workers: int) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    from workers.models.trust import split_revision

    repo, revision = split_revision(ref)  # org/name@COMMIT: that revision, nothing newer
    try:
        files = select_hub_files(HfApi().list_repo_files(repo, revision=revision))
        snapshot_download(repo, revision=revision, local_dir=target, allow_patterns=files,
                          max_workers=workers)
    except Exception as e:  # hub clients raise many types; the user needs the model and the fix
        if gated(e):
            raise DistributionError(
                f"{ref!r} is gated on the model hub: sign in at https://huggingface.co/{ref}, "
                f"accept its licence there, then set HF_TOKEN to a token of that account "
                f"(https://huggingface.co/settings/tokens) and pull again") from e
        raise DistributionError(
            f"could not download {ref!r} from the model hub ({type(e).__name__}: {e}). "
            f"Run this where the hub is reachable (set HF_TOKEN for gated models and accept "
            f"their licence on the hub), or pull from your own store: "
            f"`itx models pull --from s3://…`.") from e
    return target


def gated(e: BaseException) -> bool:
    """Whether a hub error says the repository needs its licence accepted (and a token)."""
    try:
        from huggingface_hub.errors import GatedRepoError
    except ImportError:  # an older huggingface_hub
        GatedRepoError = ()  # noqa: N806
    status = getattr(getattr(e, "response", None), "status_code", None)
    return isinstance(e, GatedRepoError) or "gated" in str(e).lower() or (
        status in (401, 403) and "access" in str(e).lower())


# --- local directory <-> store -----------------------------------------------------------------
def sha256_file(path: str | Path, bufsize: int = 4 * _MiB) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def scan(src_dir: str | Path) -> list[str]:
    """Relative POSIX paths of the files to push: hidden folders (download metadata such as
    ``.cache/``, half-finished builds) and temporary files are left out; hidden files such as
    a tiny model's ``.itx-complete`` marker are kept."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise DistributionError(f"{src_dir} is not a directory of models")
    rels = []
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(src_dir).as_posix()
            if rel == MANIFEST or name.endswith(_SKIP_SUFFIXES):
                continue
            rels.append(rel)
    return rels


def push_models(src_dir: str | Path, uri: str, *, workers: int = 8,
                part_size: int = 64 * _MiB) -> Transfer:
    """Upload every file under ``src_dir`` to the store at ``uri`` (``s3://bucket/prefix`` or
    ``file:///path``), then ``MANIFEST.json`` with each file's size and sha256.

    A file that the store's current manifest already lists with the same checksum, and whose
    object is there with the same size, is not uploaded again.
    """
    src_dir = Path(src_dir)
    rels = scan(src_dir)
    if not rels:
        raise DistributionError(f"no model files under {src_dir}: pull or build models first")
    remote = _Remote(uri, part_size)
    try:
        old = remote.manifest()["files"]
    except DistributionError:
        old = {}
    entries: dict[str, dict] = {}
    result = Transfer(files=len(rels))

    def one(rel: str) -> None:
        path = src_dir / rel
        entry = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        entries[rel] = entry
        if old.get(rel) == entry and remote.size(rel) == entry["size"]:
            result.add(False)
            return
        remote.upload(path, rel)
        result.add(True, entry["size"])

    _run_all(one, rels, workers)
    manifest = {"version": MANIFEST_VERSION,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "files": dict(sorted(entries.items()))}
    body = json.dumps(manifest, indent=1).encode()
    remote.put_bytes(MANIFEST, body)  # last: the set is complete
    result.manifest_sha256 = hashlib.sha256(body).hexdigest()
    log.info("pushed %s to %s: %s", src_dir, uri, result)
    return result


def pull_models_from(uri: str, dest_dir: str | Path, *, refs: Iterable[str] | None = None,
                     profile: str | None = None, pool: str | None = None, workers: int = 8,
                     part_size: int = 64 * _MiB) -> Transfer:
    """Download the model set at ``uri`` into ``dest_dir``, checking every file's sha256
    against the manifest; ``ChecksumError`` names the first file that does not match.

    ``refs`` (or ``profile`` with an optional ``pool``) selects part of the set: a light-pool
    pod needs no text-to-image weights. A selected model missing from the set is an error.
    """
    dest_dir = Path(dest_dir)
    remote = _Remote(uri, part_size)
    manifest = remote.manifest()
    files: dict[str, dict] = manifest["files"]
    optional: set[str] = set()
    if refs is None and profile is not None:
        refs = profile_refs(profile, pool)
        optional = set(refs) - set(required_refs(profile, pool))
    not_in_set = []
    if refs is not None:
        refs = list(refs)

        def under(rel: str, ref: str) -> bool:
            return rel == ref or rel.startswith(ref.rstrip("/") + "/")

        chosen = {rel: e for rel, e in files.items() if any(under(rel, r) for r in refs)}
        absent = [r for r in refs if not any(under(rel, r) for rel in chosen)]
        not_in_set = [r for r in absent if r in optional]
        missing = [r for r in absent if r not in optional]
        for r in not_in_set:
            log.warning("optional model %s is not in the set at %s; skipped", r, uri)
        if missing:
            have = sorted({"/".join(rel.split("/")[:2]) for rel in files})
            raise DistributionError(
                f"the model set at {uri} has no {', '.join(missing)} (it has: {', '.join(have)}). "
                f"Push a directory that holds them: `itx models pull --profile P --to DIR` "
                f"then `itx models push DIR {uri}`.")
        files = chosen
    result = Transfer(files=len(files), not_in_set=not_in_set,
                      manifest_sha256=remote.manifest_sha256)

    def one(rel: str) -> None:
        entry = files[rel]
        target = dest_dir / _safe_rel(rel)
        if (target.is_file() and target.stat().st_size == entry["size"]
                and sha256_file(target) == entry["sha256"]):
            result.add(False)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            remote.download(rel, tmp)
            got = sha256_file(tmp)
            if got != entry["sha256"]:
                raise ChecksumError(
                    f"checksum mismatch for {rel} from {uri}: sha256 {got} but MANIFEST.json "
                    f"records {entry['sha256']}. The object changed or was corrupted after "
                    f"`itx models push`; push the model set again.")
            os.replace(tmp, target)  # atomic: the loader never sees half a file
        finally:
            tmp.unlink(missing_ok=True)
        result.add(True, entry["size"])

    _run_all(one, sorted(files), workers)
    log.info("pulled %s into %s: %s", uri, dest_dir, result)
    return result


# --- helpers ---------------------------------------------------------------------------------
def _safe_rel(rel: str) -> str:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise DistributionError(f"MANIFEST.json lists {rel!r}, which is not a path inside the set")
    return rel


def _run_all(fn, items: list[str], workers: int) -> None:
    """Run ``fn`` on every item in a thread pool; the first error cancels what has not started
    and is raised as it is."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="itx-models") as pool:
        futures = [pool.submit(fn, it) for it in items]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()


def _pinned_manifest_sha256() -> str:
    from workers.settings import get_settings

    return get_settings().models_manifest_sha256.strip().lower()


class _Remote:
    """Files in and out of a store: boto3 managed transfers (multipart, streamed from and to
    disk) for S3, plain copies for a ``file://`` store."""

    def __init__(self, uri: str, part_size: int):
        self.uri = uri
        self.store: Store = open_store(uri)
        self.part_size = part_size
        self.manifest_sha256 = ""

    def _s3_key(self, rel: str) -> str:
        st = self.store
        return f"{st.prefix}/{rel}" if st.prefix else rel

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.part_size,
                              multipart_chunksize=self.part_size, max_concurrency=4)

    def manifest(self) -> dict:
        try:
            body = self.store.get(MANIFEST)
        except NotFoundError:
            raise DistributionError(
                f"no {MANIFEST} at {self.uri}: push a model set there first "
                f"(`itx models push DIR {self.uri}`)") from None
        self.manifest_sha256 = hashlib.sha256(body).hexdigest()
        pinned = _pinned_manifest_sha256()
        if pinned and self.manifest_sha256 != pinned:
            raise ChecksumError(
                f"{self.uri}/{MANIFEST} has sha256 {self.manifest_sha256}, not the "
                f"{pinned} that ITX_MODELS_MANIFEST_SHA256 pins: the model set changed after "
                f"`itx models push`. Nothing was downloaded; push again and pin the new digest.")
        try:
            m = json.loads(body)
        except ValueError:
            raise DistributionError(f"{self.uri}/{MANIFEST} is not an itx model manifest") from None
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
            raise DistributionError(f"{self.uri}/{MANIFEST} is not an itx model manifest")
        return m

    def put_bytes(self, rel: str, data: bytes) -> None:
        self.store.put(rel, data, "application/json")

    def size(self, rel: str) -> int | None:
        st = self.store
        if isinstance(st, S3Store):
            try:
                r = st._call(st.client.head_object, Bucket=st.bucket, Key=self._s3_key(rel))
            except StoreError:  # NotFoundError included: not there, upload it
                return None
            return r["ContentLength"]
        p = st.local_path(rel) if isinstance(st, FileStore) else None
        return p.stat().st_size if p is not None and p.is_file() else None

    def upload(self, path: Path, rel: str) -> None:
        st = self.store
        if isinstance(st, S3Store):
            self._s3(rel, st.client.upload_file, str(path), st.bucket, self._s3_key(rel),
                     Config=self._transfer_config())
        elif isinstance(st, FileStore):
            target = st.local_path(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        else:  # pragma: no cover - only the two stores exist
            st.put(rel, path.read_bytes())

    def download(self, rel: str, path: Path) -> None:
        st = self.store
        if isinstance(st, S3Store):
            self._s3(rel, st.client.download_file, st.bucket, self._s3_key(rel), str(path),
                     Config=self._transfer_config())
        elif isinstance(st, FileStore):
            try:
                shutil.copyfile(st.local_path(rel), path)
            except FileNotFoundError:
                raise DistributionError(f"{self.uri}/{rel} is listed in {MANIFEST} "
                                        f"but missing from the store; push again") from None
        else:  # pragma: no cover
            path.write_bytes(st.get(rel))

    def _s3(self, rel: str, fn, *args, **kw) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            fn(*args, **kw)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise DistributionError(f"{self.uri}/{rel} is listed in {MANIFEST} "
                                        f"but missing from the store; push again") from None
            raise DistributionError(f"S3 transfer of {self.uri}/{rel} failed: {e}") from e
        except BotoCoreError as e:
            raise DistributionError(f"S3 transfer of {self.uri}/{rel} failed: {e}") from e
