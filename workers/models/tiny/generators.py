"""Tiny random checkpoints of today's generators: IF stages II and III, SD-Turbo, SDXL-Turbo,
FLUX.1-schnell and SD 3.5, each built from the real pipeline, model and scheduler classes
(the schedulers configured as the real checkpoints ship them) and saved with
``save_pretrained``, so the backends load them through the same ``from_pretrained`` call as
real weights. Tokenizers come from :mod:`workers.models.tiny.diffusion` (made offline).
"""
from __future__ import annotations

from pathlib import Path

from workers.models.tiny.diffusion import _MAX_TOKENS, _clip_tokenizer, _t5_tokenizer, build_sd

# IF stage I's tiny UNet (tiny/diffusion.py), with the extra inputs of a super-resolution UNet
_IF_UNET = dict(
    layers_per_block=1, block_out_channels=(16, 32), norm_num_groups=8,
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    cross_attention_dim=32, encoder_hid_dim=32, encoder_hid_dim_type="text_proj",
    attention_head_dim=8, addition_embed_type="text", addition_embed_type_num_heads=2,
    cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu")


def _clip(tok, hidden=32, proj=False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, projection_dim=hidden,
                         max_position_embeddings=_MAX_TOKENS, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if proj else CLIPTextModel)(cfg)


def _t5(tok, d_model=32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id))


def _vae(latent=4, blocks=4, **kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent, sample_size=64,
                         down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks,
                         block_out_channels=(8, 16, 16, 16)[:blocks], layers_per_block=1,
                         norm_num_groups=8, **kw)


def build_if_ii(out: Path) -> None:
    """IF-II layout: 6-channel input (noisy + upscaled stage I image), noise-level class
    embedding, an image-noising scheduler; no text encoder (stage I's T5 embeds prompts)."""
    from diffusers import DDPMScheduler, IFSuperResolutionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=64, in_channels=6, out_channels=6,
                                class_embed_type="timestep", **_IF_UNET)
    scheduler = DDPMScheduler(  # as IF-II-L ships it
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001,
        beta_end=0.02, thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.0,
        prediction_type="epsilon", variance_type="learned_range", clip_sample=True)
    noising = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                            beta_start=0.0001, beta_end=0.02, clip_sample=True)
    IFSuperResolutionPipeline(
        tokenizer=_t5_tokenizer(), text_encoder=None, unet=unet, scheduler=scheduler,
        image_noising_scheduler=noising, safety_checker=None, feature_extractor=None,
        watermarker=None, requires_safety_checker=False).save_pretrained(out)


def build_if_iii(out: Path) -> None:
    """The Stable Diffusion x4 upscaler layout: a 4x VAE, a 7-channel UNet (latents + low-res
    image) with a noise-level embedding, DDIM v-prediction, a DDPM low-res noiser."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    tok = _clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=7, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=4, num_class_embeds=351, use_linear_projection=True,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    StableDiffusionUpscalePipeline(
        vae=_vae(blocks=3, scaling_factor=0.08333), text_encoder=_clip(tok), tokenizer=tok,
        unet=unet, low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear",
                                                   beta_start=0.0001, beta_end=0.02),
        scheduler=DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear",
                                beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        max_noise_level=350).save_pretrained(out)


def _turbo_scheduler(cls_name: str):
    import diffusers

    return getattr(diffusers, cls_name)(  # as SD-Turbo / SDXL-Turbo ship it
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, timestep_spacing="trailing", steps_offset=1)


def build_sd_turbo(out: Path) -> None:
    """SD 2.1 layout (tiny SD) with SD-Turbo's Euler scheduler, trailing timesteps."""
    from diffusers import StableDiffusionPipeline

    build_sd(out)
    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.scheduler = _turbo_scheduler("EulerDiscreteScheduler")
    pipe.save_pretrained(out)


def build_sdxl_turbo(out: Path) -> None:
    """SDXL layout: two CLIP text encoders (the second with projection), a UNet with
    text_time additional embeddings, an 8x VAE; Euler ancestral, trailing timesteps."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tok, tok2 = _clip_tokenizer(), _clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_clip(tok), text_encoder_2=_clip(tok2, proj=True),
        tokenizer=tok, tokenizer_2=tok2, unet=unet,
        scheduler=_turbo_scheduler("EulerAncestralDiscreteScheduler"),
        force_zeros_for_empty_prompt=True).save_pretrained(out)


def build_flux(out: Path) -> None:
    """FLUX.1 layout: CLIP (pooled) + T5 text encoders, an MM-DiT transformer over 2x2-packed
    latents of a 16-channel-style VAE (no quant convs), flow-matching Euler (schnell: shift 1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, tok2 = _clip_tokenizer(), _t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * 4, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0,
                                                  use_dynamic_shifting=False),
        vae=_vae(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                 use_post_quant_conv=False),
        text_encoder=_clip(tok), tokenizer=tok, text_encoder_2=_t5(tok2), tokenizer_2=tok2,
        transformer=transformer).save_pretrained(out)


def build_sd3(out: Path) -> None:
    """Stable Diffusion 3.5 layout: two CLIP text encoders with projection (pooled) + T5, an
    MM-DiT transformer over 2x2 patches of a 16-channel VAE (no quant convs), flow-matching
    Euler with shift 3."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    tok, tok2, tok3 = _clip_tokenizer(), _clip_tokenizer(), _t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=32)
    StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(latent=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                 use_post_quant_conv=False),
        text_encoder=_clip(tok, proj=True), tokenizer=tok,
        text_encoder_2=_clip(tok2, proj=True), tokenizer_2=tok2,
        text_encoder_3=_t5(tok3, d_model=64), tokenizer_3=tok3).save_pretrained(out)
