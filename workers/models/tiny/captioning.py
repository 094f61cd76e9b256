"""Tiny-random image-to-text checkpoints: BLIP (captioning and VQA), GIT and ViT-GPT2.

Each builder writes the same files the real hub checkpoint has (config, weights,
generation config, tokenizer, image processor, processor where the real one has
one), so the backends load them through exactly the code path real weights take.
Weights are random (seed 0, set by ``build``); the tokenizers are built here from
a small word list of common COCO caption words, with no hub download, so random
captions are at least made of words. Every special token id in the configs
comes from the tokenizer that ships next to it.
"""
from __future__ import annotations

from pathlib import Path


# --- shapes shared by every tiny captioner -------------------------------------------
HIDDEN = 32
LAYERS = 2
HEADS = 2
FFN = 64
IMAGE = 32  # input resolution of the image processors and vision towers
PATCH = 8  # -> 16 patches + 1 class token
MAX_POS = 64

# Common COCO caption words (lower case): random captions are drawn from these.
_WORDS = """
a an the of on in with and at to by near next from for into over under behind
top front side its his her their while
is are sitting standing holding walking riding looking playing eating laying lying
sitting parked flying driving waiting posing smiling wearing carrying covered filled
man woman men women person people boy girl child children kid kids baby player
dog dogs cat cats horse horses cow cows sheep bird birds elephant elephants bear
giraffe giraffes zebra zebras animal animals
car cars bus truck train plane airplane boat bike bicycle motorcycle street road
sign traffic light stop fire hydrant bench table chair couch bed room kitchen
bathroom toilet sink window door wall floor building buildings city house
pizza food plate sandwich cake bowl cup glass bottle wine coffee banana bananas
apple orange oranges broccoli vegetables fruit donut hot
phone laptop computer keyboard tv television remote book books clock vase
umbrella kite kites frisbee ball tennis racket baseball bat skateboard surfboard
skis snow beach water ocean wave waves field grass park tree trees sky mountain
hill river lake sand dirt
large small big little young old white black red blue green yellow brown gray
two three four several many group couple pair some other one
up down out air very
what how where who which why does do there this that it kind type color doing time
yes no
"""
WORDS = list(dict.fromkeys(_WORDS.split()))  # de-duplicate, keep order (deterministic)
PUNCT = list(".,'-!?")
DIGITS = list("0123456789")
# Random weights initialised at the usual 0.02 wash the image out of the decoder's input
# (every image gets the same caption); a wider init keeps images (and questions) apart.
INIT_RANGE = 0.15


# --- tokenizers ----------------------------------------------------------------------

def _bert_vocab(extra_special: list[str] = ()) -> dict[str, int]:
    """A WordPiece vocab of whole words: BERT's specials first ([PAD]=0), then words,
    digits and punctuation. Other words encode as [UNK]."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *extra_special]
    tokens += WORDS + DIGITS + PUNCT
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def bert_tokenizer(extra_special: tuple[str, ...] = (), **kw):
    from transformers import BertTokenizer

    return BertTokenizer(vocab=_bert_vocab(list(extra_special)), do_lower_case=True, **kw)


def gpt2_tokenizer():
    """A byte-level BPE (GPT-2) tokenizer over the word list; ``<|endoftext|>`` is the last id.

    The base alphabet is GPT-2's symbols for printable ASCII (so random captions hold
    no stray bytes; other characters are dropped when encoding); merges then build each
    word, preceded by the space marker, from its characters left to right, so every word
    of the list (after a space) is one token.
    """
    from transformers import GPT2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()  # byte -> symbol, GPT-2's fixed table
    space = byte_chars[ord(" ")]  # "Ġ"
    vocab = {byte_chars[b]: i for i, b in enumerate(range(ord(" "), ord("~") + 1))}
    merges: list[tuple[str, str]] = []
    for w in WORDS:  # all lower-case ASCII
        cur = space
        for ch in w:
            merged = cur + ch
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((cur, ch))
            cur = merged
    eot = "<|endoftext|>"
    vocab[eot] = len(vocab)
    return GPT2Tokenizer(vocab=vocab, merges=merges, unk_token=eot, bos_token=eot,
                         eos_token=eot, pad_token=eot)


def _check_ids(tok, **ids: int | None) -> None:
    """Every special id a config names must be a real token of the tokenizer saved with it."""
    n = len(tok)
    for k, v in ids.items():
        if v is None or not 0 <= v < n:
            raise AssertionError(f"tiny tokenizer: {k}={v} is not a token id (vocab {n})")


def _vision(**kw) -> dict:
    return dict(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, image_size=IMAGE, patch_size=PATCH,
                initializer_range=INIT_RANGE, **kw)


# --- BLIP ------------------------------------------------------------------------------

def _blip_parts():
    """Config, processor and special token ids shared by BLIP captioning and VQA.

    As in Salesforce/blip-*: a BERT tokenizer with ``[DEC]`` as bos (decoder start),
    ``[SEP]`` ends a caption, ``[PAD]`` pads; ``[ENC]`` is an extra special token.
    """
    from transformers import BlipConfig, BlipImageProcessor, BlipProcessor

    tok = bert_tokenizer(("[DEC]", "[ENC]"), bos_token="[DEC]",
                         extra_special_tokens=["[ENC]"])
    ids = {"bos_token_id": tok.convert_tokens_to_ids("[DEC]"), "eos_token_id": tok.sep_token_id,
           "sep_token_id": tok.sep_token_id, "pad_token_id": tok.pad_token_id}
    _check_ids(tok, **ids)
    text = dict(vocab_size=len(tok), hidden_size=HIDDEN, encoder_hidden_size=HIDDEN,
                intermediate_size=FFN, projection_dim=HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, max_position_embeddings=MAX_POS,
                initializer_range=INIT_RANGE, **ids)
    vision = _vision(projection_dim=HIDDEN)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=HIDDEN,
                        image_text_hidden_size=HIDDEN, initializer_range=INIT_RANGE)
    image_processor = BlipImageProcessor(size={"height": IMAGE, "width": IMAGE})
    return config, BlipProcessor(image_processor=image_processor, tokenizer=tok), ids


def _save(out: Path, model, gen: dict, *processing) -> None:
    """Write weights, generation config and processing files the way the hub has them."""
    from transformers import GenerationConfig

    model.eval()
    model.generation_config = GenerationConfig(**gen)
    model.save_pretrained(out)
    for p in processing:
        p.save_pretrained(out)


def build_blip(out: Path) -> None:
    from transformers import BlipForConditionalGeneration

    config, processor, ids = _blip_parts()
    model = BlipForConditionalGeneration(config)
    _save(out, model, ids, processor)


def build_blip_vqa(out: Path) -> None:
    from transformers import BlipForQuestionAnswering

    config, processor, ids = _blip_parts()
    model = BlipForQuestionAnswering(config)
    _save(out, model, ids, processor)


# --- GIT -------------------------------------------------------------------------------

def build_git(out: Path) -> None:
    """As in microsoft/git-base-coco: BERT tokenizer, bos=[CLS], eos=[SEP], CLIP image processor."""
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tok = bert_tokenizer()
    ids = {"bos_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id,
           "pad_token_id": tok.pad_token_id}
    _check_ids(tok, **ids)
    config = GitConfig(vision_config=_vision(), vocab_size=len(tok), hidden_size=HIDDEN,
                       num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                       intermediate_size=FFN, max_position_embeddings=MAX_POS,
                       initializer_range=INIT_RANGE, **ids)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE},
                                         crop_size={"height": IMAGE, "width": IMAGE})
    processor = GitProcessor(image_processor=image_processor, tokenizer=tok)
    _save(out, GitForCausalLM(config), ids, processor)


# --- ViT encoder + GPT-2 decoder --------------------------------------------------------

def build_vit_gpt2(out: Path) -> None:
    """As in nlpconnect/vit-gpt2-image-captioning: <|endoftext|> is bos, eos, pad and
    decoder start; a ViT image processor and a GPT-2 tokenizer, no processor class."""
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    tok = gpt2_tokenizer()
    eot = tok.eos_token_id
    ids = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
           "decoder_start_token_id": eot}
    _check_ids(tok, **ids)
    encoder = ViTConfig(**_vision(), qkv_bias=True)
    decoder = GPT2Config(vocab_size=len(tok), n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                         n_inner=FFN, n_positions=MAX_POS, add_cross_attention=True,
                         is_decoder=True, initializer_range=INIT_RANGE,
                         # untied: with tied random embeddings the decoder repeats its last token
                         tie_word_embeddings=False,
                         bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    for k, v in ids.items():
        setattr(config, k, v)
    image_processor = ViTImageProcessor(size={"height": IMAGE, "width": IMAGE},
                                        image_mean=[0.5] * 3, image_std=[0.5] * 3)
    _save(out, VisionEncoderDecoderModel(config=config), ids, image_processor, tok)
