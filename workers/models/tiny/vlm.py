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
    from transformers import (BartTokenizer, CLIPImageProcessor, Florence2Config,
                              Florence2ForConditionalGeneration, Florence2Processor)

    tok = _bpe(BartTokenizer, ["<s>", "<pad>", "</s>", "<unk>"],
               [f"<loc_{i}>" for i in range(1000)],
               extra_special_tokens={"image_token": "<image>"})
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.eos_token_id)
    text = dict(model_type="bart", vocab_size=len(tok), d_model=32, encoder_layers=2,
                decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=34,
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
