"""A tiny random CLIP (ViT image tower + text tower) for the score stage.

The layout is the hub's ``openai/clip-vit-base-patch32``: ``config.json``, weights, an image
processor and the CLIP BPE tokenizer (built offline, the one the tiny Stable Diffusion uses),
saved with ``save_pretrained`` so the backend loads it through the same ``from_pretrained``
path as real weights. Scores from it are numbers, not judgements.
"""
from __future__ import annotations

from pathlib import Path

IMAGE = 32  # processor resolution (real CLIP: 224)
PATCH = 8


def build_clip(out: Path) -> None:
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    from workers.models.tiny.diffusion import _MAX_TOKENS, _clip_tokenizer

    tok = _clip_tokenizer()
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=_MAX_TOKENS, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=IMAGE, patch_size=PATCH)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                 projection_dim=16))
    model.save_pretrained(out)
    # the real checkpoint's normalisation, at the tiny resolution
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE},
                                crop_size={"height": IMAGE, "width": IMAGE})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(out)
