"""The stage table: one declaration per backend, read by everything else.

A declaration says what a backend is (stage, name), where it runs (queue), what it reads
(``consumes``), how big its mini-batches are per device, how its tiny-random checkpoint is
built and which weights each profile loads. The Celery canvas, compose, preload, ``itx models
pull/list``, the CLI's choices, spec validation and the README's model table all read it;
no stage or backend name is written anywhere else.

Importing this module is cheap (no torch): backend classes are named by ``"module:Class"``
and imported on first use, so the orchestrator can read the table too.

Adding a model is one module with its backend class and one :func:`declare` call (here, or
in a plugin module named by ``ITX_PLUGINS``); see docs/adding-a-model.md.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace

LIGHT, HEAVY = "light", "heavy"
# queues a stage may be routed to: the two pools, and `ocr` for OCR on workers of its own
# (ITX_ROUTES=ocr=ocr; start them with `celery -A workers worker -Q ocr`)
OCR = "ocr"
QUEUES = (LIGHT, HEAVY, OCR)


@dataclass(frozen=True)
class Stage:
    """A kind of work. ``field`` is where its output goes in the result record; a ``keyed``
    stage keeps one entry per backend there (``captions[name]``)."""

    name: str
    queue: str
    field: str
    noun: str  # what users call one of its backends, in messages
    keyed: bool = False
    header: bool = True  # runs in the chord's header, before compose (generate: after)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("ocr", LIGHT, "ocr", "OCR engine"),
    Stage("caption", LIGHT, "captions", "captioner", keyed=True),
    Stage("vqa", LIGHT, "vqa", "VQA backend"),
    Stage("generate", HEAVY, "outputs", "generator", header=False),
    # runs inside compose (captions, prompt) and generate (outputs), on the generator's pool
    Stage("score", HEAVY, "scores", "scorer", keyed=True, header=False),
)}

# what a backend reads, besides its stage's own inputs
IMAGE = "image"          # the source image
QUESTIONS = "questions"  # the item's VQA questions
PROMPT = "prompt"        # the prompt compose built from the upstream texts
CONSUMES = (IMAGE, QUESTIONS, PROMPT)


@dataclass(frozen=True)
class Decl:
    """One backend. ``backend`` is ``"module:Class"`` (imported on first use); ``refs`` maps a
    profile to the weights it loads (a profile not listed uses ``base``'s); ``tiny`` is
    ``"module:function"`` building the checkpoint that ``refs["tiny-random"]`` names, or None
    when that checkpoint is another backend's; ``queue`` None means the stage's."""

    stage: str
    name: str
    backend: str
    refs: dict[str, str]
    consumes: tuple[str, ...] = (IMAGE,)
    batch: dict[str, int] = field(default_factory=lambda: {"cpu": 8, "cuda": 32})
    tiny: str | None = None
    queue: str | None = None
    about: str = ""  # what it is good for (the README's model table)
    # a generator family's own steps / guidance / native size, used where the spec leaves
    # them unset (before the profile's); e.g. {"steps": 4, "guidance": 0.0, "size": "512x512"}
    defaults: dict = field(default_factory=dict)
    shares: str | None = None  # "stage:backend" whose loaded components it reuses (img2img)

    @property
    def key(self) -> str:
        return f"{self.stage}:{self.name}"

    def ref(self, profile: str) -> str:
        return self.refs.get(profile) or self.refs["base"]

    def load_class(self) -> type:
        mod, _, cls = self.backend.partition(":")
        return getattr(importlib.import_module(mod), cls)


_TABLE: dict[str, Decl] = {}
# a stage may take any Hugging Face id or local path as a backend name, run by this backend
FALLBACK: dict[str, str] = {"caption": "caption:blip"}


def declare(stage: str, name: str, backend: str, refs: dict[str, str], **kw) -> Decl:
    """Add a backend to the table (a later declaration of the same key replaces it)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    if "base" not in refs or "tiny-random" not in refs:
        raise ValueError(f"{stage}:{name}: refs need at least 'base' and 'tiny-random'")
    bad = set(kw.get("consumes", ())) - set(CONSUMES)
    if bad:
        raise ValueError(f"{stage}:{name}: unknown inputs {sorted(bad)}; use {CONSUMES}")
    d = Decl(stage, name, backend, dict(refs), **kw)
    _TABLE[d.key] = d
    return d


def _plugins() -> None:
    """Import the operator's plugin modules (``ITX_PLUGINS``): each declares its backends."""
    import os

    for mod in filter(None, (m.strip() for m in os.environ.get("ITX_PLUGINS", "").split(","))):
        importlib.import_module(mod)


def get(stage: str, name: str) -> Decl:
    """The declaration of ``stage``/``name``; a hub id or path falls back where the stage has
    a fallback backend (its refs are the name itself)."""
    d = _TABLE.get(f"{stage}:{name}")
    if d is not None:
        return d
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    if stage in FALLBACK and ("/" in name or "\\" in name):
        base = _TABLE[FALLBACK[stage]]
        return replace(base, name=name, refs={"base": name, "tiny-random": name}, tiny=None)
    raise ValueError(f"unknown {STAGES[stage].noun} {name!r}; choose one of "
                     f"{', '.join(names(stage))}"
                     + (" or a Hugging Face model id / local path" if stage in FALLBACK else ""))


def names(stage: str) -> list[str]:
    return [d.name for d in _TABLE.values() if d.stage == stage]


def decls(stage: str | None = None) -> list[Decl]:
    return [d for d in _TABLE.values() if stage is None or d.stage == stage]


def routes() -> dict[str, str]:
    """``stage:name -> queue`` for every backend: the operator's override for the backend
    or its whole stage (``ITX_ROUTES=caption:qwen2.5-vl=heavy,ocr=ocr``), else the
    declaration's, else the stage's."""
    return {d.key: queue_of(d.stage, d.name) for d in _TABLE.values()}


def queue_of(stage: str, name: str) -> str:
    from workers.settings import get_settings

    d, routed = get(stage, name), get_settings().routes
    return routed.get(d.key) or routed.get(stage) or d.queue or STAGES[stage].queue


# --- the table ---------------------------------------------------------------------------------
_T = "workers.models.tiny"

declare("ocr", "easyocr", "workers.stages.ocr.easyocr:EasyOCR",
        {"base": "easyocr/en", "tiny-random": "tiny-random/easyocr"},
        batch={"cpu": 4, "cuda": 16}, tiny=f"{_T}.ocr:build_easyocr",
        about="CRAFT + CRNN, 80+ languages; GPU when the worker has one")
declare("ocr", "rapidocr", "workers.stages.ocr.rapidocr:RapidOCR",
        {"base": "builtin", "tiny-random": "builtin"}, batch={"cpu": 8, "cuda": 32},
        about="PP-OCR on onnxruntime, weights inside the wheel; fast on CPU")
declare("ocr", "tesseract", "workers.stages.ocr.tesseract:Tesseract",
        {"base": "builtin", "tiny-random": "builtin"}, batch={"cpu": 8, "cuda": 8},
        about="Tesseract 5 (Debian package); scanned documents")

declare("caption", "blip", "workers.stages.caption.image_to_text:ImageToText",
        {"base": "Salesforce/blip-image-captioning-base",
         "large": "Salesforce/blip-image-captioning-large", "tiny-random": "tiny-random/blip"},
        batch={"cpu": 16, "cuda": 64}, tiny=f"{_T}.captioning:build_blip",
        about="BLIP (COCO-finetuned): short, accurate captions")
declare("caption", "git", "workers.stages.caption.image_to_text:ImageToText",
        {"base": "microsoft/git-base-coco", "large": "microsoft/git-large-coco",
         "tiny-random": "tiny-random/git"},
        batch={"cpu": 16, "cuda": 64}, tiny=f"{_T}.captioning:build_git",
        about="GIT trained on COCO: fast, COCO-style captions")
declare("caption", "vit-gpt2", "workers.stages.caption.image_to_text:ImageToText",
        {"base": "nlpconnect/vit-gpt2-image-captioning", "tiny-random": "tiny-random/vit-gpt2"},
        batch={"cpu": 16, "cuda": 64}, tiny=f"{_T}.captioning:build_vit_gpt2",
        about="ViT encoder + GPT-2 decoder: the smallest captioner")

_FLORENCE = {"base": "florence-community/Florence-2-base",
             "large": "florence-community/Florence-2-large", "tiny-random": "tiny-random/florence-2"}
declare("caption", "florence-2", "workers.stages.caption.florence:Florence2", _FLORENCE,
        batch={"cpu": 8, "cuda": 32}, tiny=f"{_T}.vlm:build_florence2",
        about="Florence-2 (0.23B/0.77B, MIT): fast captions at three lengths, picked by "
              "--caption-prompt (Florence task tokens)")
declare("ocr", "florence-2", "workers.stages.caption.florence:Florence2OCR", _FLORENCE,
        batch={"cpu": 4, "cuda": 16},
        about="Florence-2 OCR with regions: lines with quadrilateral boxes; scene text and "
              "documents, best on a GPU")

# chat VLMs: captioners (--caption-prompt) and VQA backends (--vqa-backend), one checkpoint
_CHAT = "workers.stages.caption.chat"
for _n, _refs, _q, _b, _about in (
        ("smolvlm", {"base": "HuggingFaceTB/SmolVLM-256M-Instruct",
                     "large": "HuggingFaceTB/SmolVLM-500M-Instruct"}, None,
         {"cpu": 4, "cuda": 32}, "SmolVLM 256M/500M (Apache-2.0): a small chat VLM that "
                                 "follows --caption-prompt"),
        ("qwen2.5-vl", {"base": "Qwen/Qwen2.5-VL-3B-Instruct",
                        "large": "Qwen/Qwen2.5-VL-7B-Instruct"}, HEAVY,
         {"cpu": 2, "cuda": 16}, "Qwen2.5-VL 3B/7B: a strong chat VLM, reads text, detailed "
                                 "answers (over 2B params: heavy pool)")):
    _refs = {**_refs, "tiny-random": f"tiny-random/{_n}"}
    declare("caption", _n, f"{_CHAT}:ChatVLM", _refs, batch=_b, queue=_q,
            tiny=f"{_T}.vlm:build_{_n.replace('.', '').replace('-', '_')}", about=_about)
    declare("vqa", _n, f"{_CHAT}:ChatVQA", _refs, consumes=(IMAGE, QUESTIONS), batch=_b,
            queue=_q, about=f"{_n}: free-form answers to each image's questions, batched")

_BLIP2 = {"base": "Salesforce/blip2-opt-2.7b", "large": "Salesforce/blip2-flan-t5-xl",
          "tiny-random": "tiny-random/blip2"}
declare("caption", "blip2", "workers.stages.caption.image_to_text:ImageToText", _BLIP2,
        batch={"cpu": 4, "cuda": 32}, queue=HEAVY, tiny=f"{_T}.vlm:build_blip2",
        about="BLIP-2 (ViT-g + Q-Former + OPT-2.7B / Flan-T5-XL): zero-shot captions "
              "(3.9B params: heavy pool)")
declare("vqa", "blip2", "workers.stages.vqa.blip2:Blip2VQA", _BLIP2, consumes=(IMAGE, QUESTIONS),
        batch={"cpu": 4, "cuda": 32}, queue=HEAVY,
        about="BLIP-2: short zero-shot answers, 'Question: ... Answer:' prompts")

declare("vqa", "blip-vqa", "workers.stages.vqa.blip:BlipVQA",
        {"base": "Salesforce/blip-vqa-base", "large": "Salesforce/blip-vqa-capfilt-large",
         "tiny-random": "tiny-random/blip-vqa"},
        consumes=(IMAGE, QUESTIONS), tiny=f"{_T}.captioning:build_blip_vqa",
        about="BLIP VQA: short answers to each image's questions")

_SD = {"base": "stable-diffusion-v1-5/stable-diffusion-v1-5",
       "large": "stabilityai/stable-diffusion-xl-base-1.0", "tiny-random": "tiny-random/sd"}
declare("generate", "sd", "workers.stages.generate.sd:StableDiffusion", _SD,
        consumes=(PROMPT,), batch={"cpu": 4, "cuda": 8}, tiny=f"{_T}.diffusion:build_sd",
        about="Stable Diffusion 1.5 (SDXL in large): text-to-image")
declare("generate", "sd-img2img", "workers.stages.generate.sd:StableDiffusionImg2Img", _SD,
        consumes=(PROMPT, IMAGE), batch={"cpu": 4, "cuda": 8}, shares="generate:sd",
        about="the same weights, image-to-image: keeps the source's composition")
_G = "workers.stages.generate"
declare("generate", "if", f"{_G}.deepfloyd_if:DeepFloydIF",
        {"base": "DeepFloyd/IF-I-M-v1.0", "large": "DeepFloyd/IF-I-XL-v1.0",
         "tiny-random": "tiny-random/if"},
        consumes=(PROMPT,), batch={"cpu": 4, "cuda": 8}, tiny=f"{_T}.diffusion:build_if",
        defaults={"guidance": 7.0, "size": "1024x1024"},
        about="DeepFloyd IF (gated): the pixel-space cascade I 64 px -> II 256 px -> III "
              "1024 px, stopping at --size; strong text rendering")
declare("generate", "if-ii", f"{_G}.deepfloyd_if:IFStageII",
        {"base": "DeepFloyd/IF-II-M-v1.0", "large": "DeepFloyd/IF-II-L-v1.0",
         "tiny-random": "tiny-random/if-ii"},
        consumes=(PROMPT,), batch={"cpu": 4, "cuda": 8}, tiny=f"{_T}.generators:build_if_ii",
        about="IF stage II (gated), 64 -> 256 px super-resolution: runs inside `if`")
declare("generate", "if-iii", f"{_G}.deepfloyd_if:IFStageIII",
        {"base": "stabilityai/stable-diffusion-x4-upscaler", "tiny-random": "tiny-random/if-iii"},
        consumes=(PROMPT,), batch={"cpu": 4, "cuda": 8}, tiny=f"{_T}.generators:build_if_iii",
        about="IF stage III, the SD x4 upscaler, 256 -> 1024 px: runs inside `if`")
_TURBO = {"steps": 1, "guidance": 0.0, "size": "512x512"}
for _n, _ref, _arch in (("sd-turbo", "stabilityai/sd-turbo", "SD 2.1"),
                        ("sdxl-turbo", "stabilityai/sdxl-turbo", "SDXL")):
    _tiny = {"base": _ref, "tiny-random": f"tiny-random/{_n}"}
    declare("generate", _n, f"{_G}.turbo:Turbo", _tiny, consumes=(PROMPT,),
            batch={"cpu": 4, "cuda": 16}, tiny=f"{_T}.generators:build_{_n.replace('-', '_')}",
            defaults=_TURBO, about=f"{_arch} distilled to 1-4 steps, no guidance: fast drafts")
    declare("generate", f"{_n}-img2img", f"{_G}.sd:StableDiffusionImg2Img",
            _tiny, consumes=(PROMPT, IMAGE), batch={"cpu": 4, "cuda": 16}, shares=f"generate:{_n}",
            defaults={**_TURBO, "steps": 2},
            about=f"{_n}, image-to-image in 2-4 steps on the same weights")
_FLUX = {"base": "black-forest-labs/FLUX.1-schnell", "tiny-random": "tiny-random/flux-schnell"}
declare("generate", "flux-schnell", f"{_G}.flux:Flux", _FLUX, consumes=(PROMPT,),
        batch={"cpu": 2, "cuda": 4}, tiny=f"{_T}.generators:build_flux",
        defaults={"steps": 4, "guidance": 0.0, "size": "1024x1024"},
        about="FLUX.1 [schnell] (Apache-2.0): 12B flow transformer, T5 + CLIP, 4 steps; "
              "follows long prompts")
declare("generate", "flux-schnell-img2img", f"{_G}.flux:FluxImg2Img", _FLUX,
        consumes=(PROMPT, IMAGE), batch={"cpu": 2, "cuda": 4}, shares="generate:flux-schnell",
        defaults={"steps": 4, "guidance": 0.0, "size": "1024x1024"},
        about="flux-schnell, image-to-image on the same weights")

declare("generate", "sd3", f"{_G}.sd3:StableDiffusion3",
        {"base": "stabilityai/stable-diffusion-3.5-medium",
         "large": "stabilityai/stable-diffusion-3.5-large", "tiny-random": "tiny-random/sd3"},
        consumes=(PROMPT,), batch={"cpu": 2, "cuda": 4}, tiny=f"{_T}.generators:build_sd3",
        defaults={"steps": 28, "guidance": 4.5, "size": "1024x1024"},
        about="Stable Diffusion 3.5 medium / large (gated): MM-DiT with CLIP + T5, good prompt "
              "following and typography")

declare("score", "clip", "workers.stages.score.clip:ClipScore",
        {"base": "openai/clip-vit-base-patch32", "large": "openai/clip-vit-large-patch14",
         "tiny-random": "tiny-random/clip"},
        consumes=(IMAGE, PROMPT), batch={"cpu": 32, "cuda": 128}, tiny=f"{_T}.clip:build_clip",
        about="CLIP: CLIPScore of captions, prompt and outputs; source/output similarity")

_plugins()


def builtin(d: Decl) -> bool:
    """Declared by itx itself (not by a plugin module)."""
    return d.backend.startswith("workers.")


def markdown(plugins: bool = True) -> str:
    """The README's model table, made from the declarations (``itx models table``; a test
    keeps the README equal to it)."""
    rows = ["| stage | backend | pool | base | large | tiny-random | good for |",
            "|---|---|---|---|---|---|---|"]
    for d in decls():
        if not plugins and not builtin(d):
            continue
        q = d.queue or STAGES[d.stage].queue
        rows.append(f"| {d.stage} | `{d.name}` | {q} | `{d.ref('base')}` | `{d.ref('large')}` "
                    f"| `{d.ref('tiny-random')}` | {d.about} |")
    return "\n".join(rows)
