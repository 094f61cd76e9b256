"""Typed settings from ``ITX_*`` environment variables (and ``.env``).

Deployment knobs live here; per-model knobs live on the backend classes.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_model_dir() -> Path:
    return Path.home() / ".cache" / "itx" / "models"


class Settings(BaseSettings):
    # errors never echo a value back: a bad setting may be a URL with a password in it
    model_config = SettingsConfigDict(env_prefix="ITX_", env_file=".env", extra="ignore",
                                      hide_input_in_errors=True)

    # --- services -------------------------------------------------------
    # secrets (passwords in the URLs): SecretStr shows as '**********' in every repr, log and
    # traceback; the one reader is workers.app.celery_config (.get_secret_value())
    broker_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    result_backend: SecretStr = SecretStr("redis://127.0.0.1:6379/1")
    store: str = "file://./itx-store"

    # --- models ---------------------------------------------------------
    profile: str = "base"
    model_dir: Path = Field(default_factory=_default_model_dir)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # generators: "on" moves each sub-model (text encoder, denoiser, VAE, cascade stage) to the
    # GPU only while it runs (diffusers' enable_model_cpu_offload); "off" keeps all loaded;
    # "auto" offloads a pipeline whose weights take over half the GPU
    generate_offload: Literal["auto", "on", "off"] = "auto"
    # generator fast paths (workers/stages/generate/diffusion.py; benchmarks/gpu.py --sd-fast
    # measures each). Fused QKV: one projection matmul per attention for q, k, v (k, v in
    # cross-attention), denoiser and VAE: the same maths; "auto" fuses on CUDA only
    generate_fuse_qkv: Literal["auto", "on", "off"] = "auto"
    # channels-last memory format on CUDA: the denoiser, the denoiser and the VAE, or neither
    generate_channels_last: Literal["denoiser", "all", "off"] = "denoiser"
    # torch.compile on CUDA: the denoiser, or the denoiser and the VAE decoder (slow first
    # call per batch shape); the mode "reduce-overhead" adds CUDA graphs
    generate_compile: Literal["off", "denoiser", "all"] = "off"
    generate_compile_mode: Literal["default", "reduce-overhead", "max-autotune",
                                   "max-autotune-no-cudagraphs"] = "default"
    # captioners (blip, vit-gpt2): a static KV cache in generate (the same captions); with
    # caption_compile also generate's compiled decoder step on CUDA (implies the static cache)
    caption_static_cache: bool = False
    caption_compile: bool = False
    preload: bool = False  # load this pool's models when a worker process starts
    models_uri: str = ""  # s3://bucket/models: the set `itx models pull --from` reads (k8s init)
    # trusted models only (workers/models/trust.py, docs/security.md)
    allowed_models: str = ""  # comma-separated refs and prefixes (end in / or *); "": profiles'
    model_roots: str = ""  # comma-separated directories whose models may be named by path
    allow_pickle: bool = False  # load pickled .bin/.pt weights (they can run code)
    models_manifest_sha256: str = ""  # the pinned sha256 of the model set's MANIFEST.json
    heartbeat_file: Path | None = None  # touched at each worker heartbeat; probes read its age

    # --- stages ---------------------------------------------------------
    # where a backend (or a whole stage) runs, when not where the stage table says:
    # "caption:qwen2.5-vl=heavy,ocr=ocr" (queues: light, heavy, ocr)
    routes: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # decoded images a worker process keeps for the other stages of the same chunk, in bytes
    image_cache_bytes: int = 512 * 1024 * 1024
    # glibc: blocks of this many bytes and more (decoded images) get their own mapping and go
    # back to the OS when freed; 0 keeps glibc's sliding threshold, under which a worker's RSS
    # crept up over a stream of large images (workers/pipeline/read.py)
    malloc_mmap_threshold: int = 1024 * 1024
    # while a chunk computes, read the next one this process will likely run (ledger, images,
    # stage-reuse lookups); reuse entries are written in the background
    prefetch: bool = True
    # the process that ran a chunk's last header stage composes it at once and writes its
    # records in the background while its next task runs (compose then only waits for them)
    compose_ahead: bool = True

    # --- limits on input (each has its own error) ------------------------
    max_pixels: int = 40_000_000
    max_image_bytes: int = 50 * 1024 * 1024
    max_prompt_chars: int = 2000
    max_outputs_per_item: int = 8
    # --- limits on what submitters ask for (workers/limits.py) --------------
    edit_rule_timeout_s: float = 1.0  # CPU seconds one regex/replace rule may take per item
    max_edit_rules: int = 32  # per item: the spec's rules plus the item's own
    max_edit_rule_chars: int = 4000
    max_questions: int = 16  # per item: the spec's questions plus the item's own
    max_question_chars: int = 500
    max_echo_chars: int = 1000  # of a source or a message quoting user input, in records
    max_steps: int = 150  # diffusion steps per image
    max_output_pixels: int = 2048 * 2048  # width x height of a generated image
    object_cache_bytes: int = 64 * 1024 * 1024  # chunks/partials a worker process keeps (JSON bytes)

    # --- operating batches ------------------------------------------------
    # remove a batch's transient objects (parts/, chunk ledgers) once every item has its
    # record, when `itx submit --wait` / `itx retry --wait` sees it finish (else: `itx gc`)
    auto_gc: bool = True

    # --- work shape -----------------------------------------------------
    chunk_size: int = 16
    # where `http(s)://` inputs may come from: "https://host", "http://host:8080", or a bare
    # "host" (https and http on their default ports)
    http_allow_hosts: list[str] = Field(default_factory=list)
    http_allow_private: bool = False  # fetch from loopback/private/link-local addresses too
    # local folders manifest rows may name (besides the manifest's own folder; --input-root)
    input_roots: list[Path] = Field(default_factory=list)
    # buckets s3:// inputs may be copied from, besides the store's own
    input_buckets: list[str] = Field(default_factory=list)
    http_max_bytes: int = 50 * 1024 * 1024
    http_timeout_s: float = 20.0
    light_time_limit: int = 600  # seconds per light task (soft limit 10 %, at least 5 s, earlier)
    heavy_time_limit: int = 1800  # seconds per heavy task
    max_tasks_per_child: int = 0  # 0: never recycle a worker process by task count
    max_memory_per_child_kb: int = 0  # 0: no limit; else recycle a process above this RSS

    # --- reliability (docs/guarantees.md) ---------------------------------
    # Redis redelivers a message whose worker died only after this many seconds. 0: derived,
    # 2 x the longest time limit + 600 s. Shorter recovers faster, but a task still running
    # after it is delivered a second time (harmless: writes are idempotent, work is doubled).
    visibility_timeout: int = 0
    # Cold shutdown (SIGQUIT, or SIGTERM with REMAP_SIGTERM=SIGQUIT) first waits this long for
    # running tasks, then cancels them and puts their messages back on the queue at once.
    soft_shutdown_timeout: float = 30.0
    # `itx submit --wait`: how long it rides out a lost broker/result backend (reconnecting with
    # backoff) before it ends (exit 2), and how long it waits with no item finishing before it
    # ends with items pending (exit 3; 0: the visibility timeout plus the heavy time limit)
    wait_reconnect_s: float = 300.0
    wait_stall_s: float = 0.0
    # S3 requests: botocore's standard retry mode (exponential backoff with jitter)
    # a task whose worker process died this many times while running it (OOM killer, a
    # segfault in a decoder) is given up: its chunk's items get `worker_lost` records. 0: never
    max_worker_losses: int = 3
    s3_max_attempts: int = 6
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 60.0

    # --- Redis over TLS (rediss:// URLs); a password goes in the URL: rediss://:PASSWORD@host
    redis_ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    redis_ssl_ca_certs: str = ""  # CA bundle that signed the server's certificate (default: system)
    redis_ssl_certfile: str = ""  # client certificate, when the server asks for one
    redis_ssl_keyfile: str = ""
    # --- RabbitMQ over TLS (amqps:// URLs): certificate and host name always verified
    amqp_ssl_ca_certs: str = ""  # CA bundle (default: the system's)
    amqp_ssl_certfile: str = ""  # client certificate, when the server asks for one
    amqp_ssl_keyfile: str = ""

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _url(cls, v: SecretStr, info):
        # a typo such as rediss//:PASSWORD@host would otherwise reach kombu as a host name,
        # and kombu prints host names, passwords and all
        if not re.match(r"^[a-z][a-z0-9+.-]*://", v.get_secret_value()):
            raise ValueError(f"ITX_{info.field_name.upper()} is not a URL like "
                             f"redis://:PASSWORD@HOST:PORT/DB (its value is not shown)")
        return v

    @field_validator("routes", mode="before")
    @classmethod
    def _routes(cls, v):
        if not isinstance(v, str):
            return v
        from workers.stages.table import QUEUES, STAGES

        out = {}
        for part in filter(None, (p.strip() for p in v.split(","))):
            key, eq, queue = (x.strip() for x in part.rpartition("="))
            if not eq or key.split(":")[0] not in STAGES or queue not in QUEUES:
                raise ValueError(f"ITX_ROUTES entry {part!r}: write STAGE:BACKEND=QUEUE or "
                                 f"STAGE=QUEUE (stages: {', '.join(STAGES)}; queues: "
                                 f"{', '.join(QUEUES)})")
            out[key] = queue
        return out

    @field_validator("model_dir", mode="before")
    @classmethod
    def _expand(cls, v):
        return Path(v).expanduser() if v is not None else v


_current: Settings | None = None


def get_settings() -> Settings:
    global _current
    if _current is None:
        _current = Settings()
    return _current


def reset_settings() -> None:
    """Forget cached settings (tests and the CLI call this after changing env)."""
    global _current
    _current = None


@contextmanager
def use_settings(**overrides):
    """Run with some settings changed (embedded mode points the store at ``--out``)."""
    global _current
    before = _current
    _current = get_settings().model_copy(update=overrides)
    try:
        yield _current
    finally:
        _current = before
