"""Tiny random text-to-image checkpoints: Stable Diffusion and DeepFloyd IF stage I.

Each builder writes a complete diffusers pipeline directory with ``save_pretrained``,
so the generate backends load it through the same ``from_pretrained`` call as real
weights. Everything, tokenizers included, is made here; nothing comes from the hub.
The shapes follow the real models (an 8x VAE, a CLIP text encoder and tokenizer with
77 positions; a pixel-space IF UNet with T5 text projection), only much smaller.
"""
from __future__ import annotations

from pathlib import Path


# a few common words get their own BPE merges / unigram pieces, so prompts tokenize
# into words rather than letters; everything else falls back to single characters
_WORDS = ("a", "the", "of", "and", "with", "in", "on", "photo", "cat", "dog", "street",
          "man", "woman", "red", "blue", "sky", "tree", "watercolor", "painting", "sign")
_MAX_TOKENS = 77  # both real text encoders read 77 tokens


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: one printable character per byte value."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def _clip_tokenizer():
    """A CLIP BPE tokenizer over the byte alphabet plus merges for ``_WORDS``."""
    from transformers import CLIPTokenizer

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    alphabet = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for tok in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    vocab[bos] = len(vocab)
    vocab[eos] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_MAX_TOKENS)


def _t5_tokenizer():
    """A T5 (unigram) tokenizer: the three T5 specials, word pieces, then single characters."""
    from transformers import T5Tokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -3.0) for w in _WORDS]
    pieces += [(c, -5.0) for c in chars] + [("▁" + c, -5.5) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=_MAX_TOKENS)


def build_sd(out: Path) -> None:
    """Stable Diffusion 1.x layout: CLIP text encoder, 8x VAE, cross-attention UNet, PNDM."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=_MAX_TOKENS, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    # four blocks: the same 8x down-sampling as the real VAE, so sizes map 1:1
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
    )
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    # the scheduler configuration Stable Diffusion 1.5 ships with
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out)


def build_if(out: Path) -> None:
    """DeepFloyd IF stage I layout: T5 encoder, pixel-space UNet with text projection, DDPM."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = _t5_tokenizer()
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    ))
    # the block types, text embedding and 6 output channels (mean + variance) of IF-I
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=6, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32, encoder_hid_dim=32, encoder_hid_dim_type="text_proj",
        attention_head_dim=8, addition_embed_type="text", addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu",
    )
    # the scheduler configuration IF-I ships with
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02,
        thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5,
        prediction_type="epsilon", variance_type="learned_range", clip_sample=True,
    )
    pipe = IFPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
