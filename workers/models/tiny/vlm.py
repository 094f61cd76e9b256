"""Tiny random vision-language checkpoints: Florence-2, SmolVLM, Qwen2.5-VL and BLIP-2.

Each is the real model class over its real config class (small widths), saved with its real
processor (image processor + tokenizer + chat template where the hub checkpoint has one)
and the special tokens the processor needs (image tokens, Florence-2's ``<loc_*>``), so the
backends load them through the same ``from_pretrained`` path as real weights. Tokenizers are
byte-level BPEs over the tiny captioners' word list (:mod:`workers.models.tiny.captioning`).
"""
from __future__ import annotations

from pathlib import Path

from workers.models.tiny.captioning import INIT_RANGE, WORDS, _save


def _bpe(cls, specials: list[str], added: list[str] = (), **kw):
    """A byte-level BPE tokenizer of class ``cls``: ``specials`` first (ids 0..), then the
    printable ASCII alphabet, one merged token per word of the list, then ``added``."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = bytes_to_unicode()
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(ord(" "), ord("~") + 1):
        vocab.setdefault(chars[b], len(vocab))
    merges = []
    for w in WORDS:
        cur = chars[ord(" ")]
        for ch in w:
            if cur + ch not in vocab:
                vocab[cur + ch] = len(vocab)
                merges.append((cur, ch))
            cur += ch
    tok = cls(vocab=vocab, merges=merges, **kw)
    if added:
        tok.add_tokens(list(added), special_tokens=False)
    return tok


# --- Florence-2 -----------------------------------------------------------------------------
def build_florence2(out: Path) -> None:
    """As florence-community/Florence-2-base: a DaViT vision tower, a BART encoder-decoder,
    a BART tokenizer with ``<image>`` and the 1000 ``<loc_*>`` box tokens."""
    from transformers import (
        BartTokenizer,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    tok = _bpe(BartTokenizer, ["<s>", "<pad>", "</s>", "<unk>"],
               [f"<loc_{i}>" for i in range(1000)],
               extra_special_tokens={"image_token": "<image>"})
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.eos_token_id)
    text = dict(model_type="bart", vocab_size=len(tok), d_model=32, encoder_layers=2,
                decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                init_std=INIT_RANGE, forced_eos_token_id=tok.eos_token_id, **ids)
    vision = dict(depths=(1, 1), patch_size=(7, 3), patch_stride=(4, 2), patch_padding=(3, 1),
                  patch_prenorm=(False, True), embed_dim=(16, 32), num_heads=(2, 2),
                  num_groups=(2, 2), window_size=2, projection_dim=32,
                  max_position_embeddings=8, initializer_range=INIT_RANGE)
    config = Florence2Config(text_config=text, vision_config=vision,
                             image_token_id=tok.image_token_id)
    image = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False,
                               crop_size={"height": 32, "width": 32})
    image.image_seq_length = 17  # (32 / 8)^2 patches + 1 temporal-pooled token
    # the parse rules the hub processor ships (post_process_generation reads them)
    parse = {"ocr": {"AREA_THRESHOLD": 0.0}, "pure_text": {}, "description_with_bboxes": {}}
    processor = Florence2Processor(image_processor=image, tokenizer=tok,
                                   post_processor_config=parse)
    _save(out, Florence2ForConditionalGeneration(config), {**ids, "num_beams": 1}, processor)


# --- SmolVLM (Idefics3 architecture) ------------------------------------------------------
# HuggingFaceTB/SmolVLM-256M-Instruct's chat template
SMOLVLM_CHAT = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def build_smolvlm(out: Path) -> None:
    """As HuggingFaceTB/SmolVLM-256M-Instruct: a SigLIP tower, pixel shuffle (scale 2), a
    Llama decoder; the image processor splits large images into tiles plus a global view
    (so images of different sizes give prompts of different lengths), tile tokens
    ``<row_i_col_j>``, ``<end_of_utterance>`` ends a turn."""
    from transformers import (
        GPT2Tokenizer,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    named = {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
             "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}
    tiles = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok = _bpe(GPT2Tokenizer, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], tiles,
               unk_token="<|endoftext|>", bos_token="<|im_start|>", eos_token="<end_of_utterance>",
               pad_token="<|im_end|>", extra_special_tokens=named)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512, initializer_range=INIT_RANGE, **ids)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=32, patch_size=8,
                  initializer_range=INIT_RANGE)
    config = SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=2,
                           image_token_id=tok.image_token_id, **ids)
    image = SmolVLMImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                  do_image_splitting=True)
    video = SmolVLMVideoProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    processor = SmolVLMProcessor(image_processor=image, tokenizer=tok, video_processor=video,
                                 image_seq_len=4, chat_template=SMOLVLM_CHAT)  # (32/8)^2 / 2^2
    _save(out, SmolVLMForConditionalGeneration(config), ids, processor)


# --- Qwen2.5-VL -----------------------------------------------------------------------------
# Qwen/Qwen2.5-VL-3B-Instruct's chat template (its video branch left out)
QWEN_CHAT = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_qwen25_vl(out: Path) -> None:
    """As Qwen/Qwen2.5-VL-3B-Instruct: a windowed ViT (14 px patches, 2x2 merge, 2-frame
    temporal patches) at the image's own resolution (so sizes change the token count), a
    Qwen2 decoder with multimodal RoPE (mrope sections), a Qwen2 BPE tokenizer."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = _bpe(Qwen2Tokenizer, [], [], unk_token=None, bos_token=None,
               eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens(specials, special_tokens=True)
    cid = tok.convert_tokens_to_ids
    ids = dict(eos_token_id=cid("<|im_end|>"), pad_token_id=cid("<|endoftext|>"))
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                initializer_range=INIT_RANGE, rope_parameters={
                    "rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e6},
                **ids)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  out_hidden_size=32, fullatt_block_indexes=[1], initializer_range=INIT_RANGE)
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=cid("<|image_pad|>"),
        video_token_id=cid("<|video_pad|>"), vision_start_token_id=cid("<|vision_start|>"),
        vision_end_token_id=cid("<|vision_end|>"), **ids)
    px = {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16}  # 4..16 merged tokens
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=px), tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(size=px), chat_template=QWEN_CHAT)
    _save(out, Qwen2_5_VLForConditionalGeneration(config), ids, processor)


# --- BLIP-2 ---------------------------------------------------------------------------------
def build_blip2(out: Path) -> None:
    """As Salesforce/blip2-opt-2.7b: a ViT, a Q-Former with learned queries, an OPT decoder;
    the GPT-2-style OPT tokenizer (``</s>`` starts every text) with ``<image>``, whose
    ``num_query_tokens`` copies the processor puts before the text."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GPT2Tokenizer,
    )

    tok = _bpe(GPT2Tokenizer, ["<s>", "<pad>", "</s>", "<unk>"], [], bos_token="</s>",
               eos_token="</s>", pad_token="<pad>", unk_token="<unk>", add_bos_token=True)
    queries = 4
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                               tokenizer=tok, num_query_tokens=queries)  # adds <image>
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8,
                           initializer_range=INIT_RANGE),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, encoder_hidden_size=32,
                            initializer_range=INIT_RANGE),
        text_config=dict(model_type="opt", vocab_size=len(tok), hidden_size=32, ffn_dim=64,
                         num_hidden_layers=2, num_attention_heads=2, word_embed_proj_dim=32,
                         max_position_embeddings=128, init_std=INIT_RANGE, **ids),
        num_query_tokens=queries, image_token_id=tok.convert_tokens_to_ids("<image>"))
    _save(out, Blip2ForConditionalGeneration(config), ids, processor)
