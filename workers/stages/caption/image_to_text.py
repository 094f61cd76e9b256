"""Captioning: any Hugging Face image-to-text model, one batched ``generate`` per mini-batch.

One class serves BLIP, GIT, ViT-GPT2 (VisionEncoderDecoder) and, as the stage's fallback,
any other image-to-text model named by hub id or local path. The model loads through
``AutoModelForImageTextToText`` (or, failing that, the class its config names); the
processor (or, where a checkpoint has none, its image processor and tokenizer) is called
once per mini-batch, never per image.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, ClassVar

import torch
from PIL import Image

from workers.stages.base import Backend

log = logging.getLogger(__name__)

# Models whose checkpoints caption from the image alone (prompt optional).
# Anything else with a chat template (LLaVA-style) is asked ``chat_prompt``.
IMAGE_ONLY = {"blip", "blip-2", "git", "vision-encoder-decoder", "pix2struct", "kosmos-2"}
# Architectures whose captions stay the same with a static KV cache (ITX_CAPTION_STATIC_CACHE;
# tests/test_gpu_bench.py). GIT's generate fails with one (transformers 5.25): it keeps its
# dynamic cache.
STATIC_CACHE = {"blip", "vision-encoder-decoder"}


def rgb(images: list[Image.Image]) -> list[Image.Image]:
    """RGB as itx decodes any input (transparency on white, as HF processors flatten it)."""
    from workers.images import to_rgb

    return [to_rgb(im) for im in images]


def load_model(ref: str, device: str, dtype, auto_cls=None):
    """``from_pretrained`` with SDPA where the architecture has it, moved to ``device``/``dtype``."""
    import transformers

    from workers.models.trust import use_safetensors

    auto_cls = auto_cls or transformers.AutoModelForImageTextToText
    safe = use_safetensors()  # True: pickled weights never load (docs/security.md)

    def _load(cls):
        try:
            return cls.from_pretrained(ref, dtype=dtype, attn_implementation="sdpa",
                                       use_safetensors=safe)
        except ValueError as e:  # "... does not support an attention implementation ..."
            if not any(w in str(e).lower() for w in ("attention", "attn", "sdpa")):
                raise
            # this architecture has no SDPA
            return cls.from_pretrained(ref, dtype=dtype, use_safetensors=safe)

    try:
        model = _load(auto_cls)
    except ValueError as e:  # not in the auto mapping: use the class the config names
        config = transformers.AutoConfig.from_pretrained(ref)
        archs = [a for a in (config.architectures or []) if hasattr(transformers, a)]
        if not archs:
            raise ValueError(f"{ref}: not an image-to-text model this transformers knows ({e})") from e
        model = _load(getattr(transformers, archs[0]))
    return model.to(device=device, dtype=dtype).eval()


def load_processing(ref: str):
    """(processor or None, image processor, tokenizer) for a checkpoint directory."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    proc = AutoProcessor.from_pretrained(ref)
    if getattr(proc, "image_processor", None) is not None and getattr(proc, "tokenizer", None):
        return proc, proc.image_processor, proc.tokenizer
    # e.g. ViT-GPT2: an image processor and a tokenizer, no processor class
    tok = proc if hasattr(proc, "batch_decode") else AutoTokenizer.from_pretrained(ref)
    return None, AutoImageProcessor.from_pretrained(ref), tok


def image_kwargs(image_processor, device: str) -> dict[str, Any]:
    """Torchvision-backed image processors resize on the model's device (the GPU, where one is)."""
    try:
        from transformers.image_processing_backends import TorchvisionBackend
    except ImportError:  # a transformers without the torchvision backend
        return {}
    return {"device": device} if isinstance(image_processor, TorchvisionBackend) else {}


def to_device(inputs, device: str, dtype) -> dict[str, Any]:
    """Move a processor's output to the model: float tensors (pixels) take the model's dtype."""
    out = {}
    for k, v in dict(inputs).items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
        out[k] = v
    return out


class ImageToText(Backend):
    """Captions a mini-batch of images with one ``generate`` call."""

    name = "image-to-text"
    # generation knobs (greedy by default: deterministic, and what the COCO numbers use)
    max_new_tokens: ClassVar[int] = 30
    num_beams: ClassVar[int] = 1
    # text every caption starts with (the decoder continues it), e.g. "a picture of" for BLIP;
    # None captions unconditionally, as the COCO-finetuned checkpoints expect
    prompt: ClassVar[str | None] = None
    # what chat-style VLMs (LLaVA and the like) are asked
    chat_prompt: ClassVar[str] = "Describe this image in one short sentence."

    def load(self, ref: str, device: str, dtype) -> None:
        self.device, self.dtype = device, dtype
        self.model = load_model(ref, device, dtype)
        self.processor, self.image_processor, self.tokenizer = load_processing(ref)
        self.image_kw = image_kwargs(self.image_processor, device)
        self.model_type = self.model.config.model_type
        self.chat = (self.model_type not in IMAGE_ONLY and self.processor is not None
                     and getattr(self.processor, "chat_template", None) is not None)
        if self.chat:
            self.tokenizer.padding_side = "left"  # decoder-only models continue the prompt
        log.info("caption %s: %s (%s attention) on %s, %s", ref, type(self.model).__name__,
                 self.model.config._attn_implementation, device, dtype)

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image], **generate_kwargs) -> list[str]:
        # 1. preprocess the whole mini-batch at once
        inputs = self._inputs(rgb(images))
        # 2. one generate call for the mini-batch
        kw = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
              "do_sample": False, **generate_kwargs}
        out = self.model.generate(**inputs, **kw, **self._cache_kwargs(inputs, kw))
        # 3. decode (a chat model echoes its question first: drop it)
        if self.chat:
            out = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def _cache_kwargs(self, inputs: dict, kw: dict) -> dict[str, Any]:
        """``ITX_CAPTION_STATIC_CACHE``: generate with a static KV cache (fixed shapes);
        ``ITX_CAPTION_COMPILE``: that, and generate's compiled decoder step (CUDA only:
        transformers compiles the forward of a static-cache generate on GPUs)."""
        from workers.settings import get_settings

        s = get_settings()
        if not (s.caption_static_cache or s.caption_compile) or self.model_type not in STATIC_CACHE:
            return {}
        out: dict[str, Any] = {"disable_compile": not s.caption_compile}
        if self.model_type != "blip":
            return {**out, "cache_implementation": "static"}
        # BLIP's text decoder needs its cross-attention keys (the image's) in a cache of their
        # own, or they land in the static self-attention cache: static for the text, dynamic
        # (filled once, at the first step) for the image; one fixed length across calls
        from transformers import DynamicCache, EncoderDecoderCache, StaticCache

        cfg = self.model.config.text_config
        prompt = inputs["input_ids"].shape[1] if "input_ids" in inputs else 1
        length = -(-(prompt + kw["max_new_tokens"]) // 32) * 32
        cache = EncoderDecoderCache(StaticCache(config=cfg, max_cache_len=length),
                                    DynamicCache(config=cfg))
        params = inspect.signature(self.model.text_decoder.forward).parameters
        return {**out, ("cache" if "cache" in params else "past_key_values"): cache}

    def _inputs(self, images: list[Image.Image]) -> dict[str, Any]:
        n = len(images)
        if self.chat:
            conv = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": self.chat_prompt}]}]
            text = self.processor.apply_chat_template(conv, add_generation_prompt=True)
            inputs = self.processor(images=images, text=[text] * n, return_tensors="pt",
                                    padding=True, **self.image_kw)
            return to_device(inputs, self.device, self.dtype)
        pixels = self.image_processor(images, return_tensors="pt", **self.image_kw)
        inputs = to_device(pixels, self.device, self.dtype)
        if self.prompt:
            inputs.update(self._prompt_ids(n))
        return inputs

    def _prompt_ids(self, n: int) -> dict[str, torch.Tensor]:
        """The prompt as each architecture's decoder expects to continue it."""
        tok, cfg = self.tokenizer, self.model.config
        words = tok(self.prompt, add_special_tokens=False).input_ids
        if self.model_type == "git":  # "[CLS] prompt", no [SEP]
            key, ids = "input_ids", [cfg.bos_token_id, *words]
        elif cfg.is_encoder_decoder:  # e.g. ViT-GPT2: the decoder starts from its start token
            key, ids = "decoder_input_ids", [cfg.decoder_start_token_id, *words]
        else:  # BLIP: "[CLS] prompt [SEP]"; generate swaps in [DEC] and drops the [SEP]
            key, ids = "input_ids", tok(self.prompt).input_ids
        t = torch.tensor([ids] * n, device=self.device)
        mask = "decoder_attention_mask" if key.startswith("decoder") else "attention_mask"
        return {key: t, mask: torch.ones_like(t)}
