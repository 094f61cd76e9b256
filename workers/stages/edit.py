"""Edit rules: declarative text edits that turn an item's texts into a generation prompt.

Rules apply in order to the prompt being built:

``template:TEXT``          replace the prompt with TEXT, filling placeholders
                           ``{caption}`` (the chosen captioner's), ``{caption:NAME}``,
                           ``{ocr}``, ``{vqa:QUESTION}``, ``{prompt}`` (the prompt so far) and
                           ``{meta:NAME}`` (the input's metadata: a dataset's ``caption``,
                           ``key``, kept columns; empty where the item has no such field)
``replace:OLD=NEW``        replace whole words OLD with NEW (case-insensitive)
``regex:/PATTERN/REPL/FLAGS``  ``re.sub``; FLAGS from ``i``, ``m``, ``s``
``style:NAME``             append a named style (see ``STYLES``)

The prompt starts as the chosen captioner's caption (else the OCR text). Every rule
is parsed and checked before any work starts: unknown placeholders, bad regexes and
unknown styles are ``EditRuleError``s.

Rules are user programs, so they run bounded: each ``regex``/``replace`` rule gets a CPU-time
budget per item (the ``regex`` package's ``timeout``; over it: ``RuleLimitError("timeout")``),
and the prompt's length is checked after each rule and while a template is filled
(``RuleLimitError("prompt_too_long")``), so doubling rules cannot grow it without bound.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import regex

STYLES: dict[str, str] = {
    "watercolor": "watercolor painting, soft washes of colour, paper texture",
    "oil-painting": "oil painting, thick brush strokes, rich colours",
    "pencil-sketch": "pencil sketch, graphite, hand-drawn lines",
    "photo": "photograph, natural light, sharp focus, 35mm",
    "anime": "anime illustration, clean line art, cel shading",
    "pixel-art": "pixel art, 16-bit, limited palette",
    "cyberpunk": "cyberpunk, neon lights, rain-soaked streets, night",
    "ukiyo-e": "ukiyo-e woodblock print, flat colours, bold outlines",
    "comic": "comic book art, halftone dots, bold ink",
    "3d-render": "3d render, octane, soft global illumination",
}


class EditRuleError(ValueError):
    """A rule that cannot be applied; raised before any work starts."""


class RuleLimitError(ValueError):
    """A rule went over a limit while it ran: ``kind`` is ``timeout`` or ``prompt_too_long``."""

    def __init__(self, kind: str, msg: str):
        self.kind = kind
        super().__init__(f"{kind}: {msg}")


def _too_long(n: int, limit: int) -> RuleLimitError:
    return RuleLimitError("prompt_too_long", f"the prompt has {n} characters; the limit is {limit}")


@dataclass(frozen=True)
class Texts:
    """What an item knows when its prompt is built."""

    captions: dict[str, str] = field(default_factory=dict)
    ocr: str = ""
    vqa: dict[str, str] = field(default_factory=dict)
    caption_model: str | None = None  # whose caption {caption} means
    meta: dict = field(default_factory=dict)  # the input's metadata (dataset inputs)

    def base_prompt(self) -> str:
        if self.caption_model and self.caption_model in self.captions:
            return self.captions[self.caption_model]
        if self.captions:
            return next(iter(self.captions.values()))
        return self.ocr


@dataclass(frozen=True)
class Rule:
    kind: str
    arg: str
    compiled: object = None

    def apply(self, prompt: str, t: Texts, max_chars: int | None = None,
              timeout: float | None = None) -> str:
        if self.kind == "template":
            return _fill(self.arg, prompt, t, max_chars)
        try:
            if self.kind == "replace":
                pattern, new = self.compiled
                return pattern.sub(lambda _m: new, prompt, timeout=timeout)
            if self.kind == "regex":
                pattern, repl = self.compiled
                return pattern.sub(repl, prompt, timeout=timeout)
        except TimeoutError:
            raise RuleLimitError("timeout", f"edit rule {self.kind}:{self.arg[:80]!r} ran over "
                                 f"its {timeout} s budget (ITX_EDIT_RULE_TIMEOUT_S)") from None
        if self.kind == "style":
            return f"{prompt}, {STYLES[self.arg]}" if prompt else STYLES[self.arg]
        raise AssertionError(self.kind)


_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _tokens(template: str):
    """Yield ("text", s) and ("field", name) pieces; {{ and }} are literal braces."""
    pos = 0
    for m in _TOKEN.finditer(template):
        if m.start() > pos:
            yield "text", template[pos:m.start()]
        tok = m.group(0)
        if tok in ("{{", "}}"):
            yield "text", tok[0]
        elif m.group(1) is not None:
            yield "field", m.group(1).strip()
        else:
            raise EditRuleError(f"template {template!r}: unmatched {tok!r} "
                                f"(write literal braces as {{{{ and }}}})")
        pos = m.end()
    if pos < len(template):
        yield "text", template[pos:]


def _placeholders(template: str) -> list[str]:
    return [v for k, v in _tokens(template) if k == "field"]


def _fill(template: str, prompt: str, t: Texts, max_chars: int | None = None) -> str:
    out: list[str] = []
    n = 0
    for kind, v in _tokens(template):
        if kind == "text":
            piece = v
        elif v == "caption":
            piece = (t.base_prompt() if not t.caption_model
                     else t.captions.get(t.caption_model, ""))
        elif v == "prompt":
            piece = prompt
        elif v == "ocr":
            piece = t.ocr
        elif v.startswith("caption:"):
            piece = t.captions.get(v.split(":", 1)[1], "")
        elif v.startswith("vqa:"):
            piece = t.vqa.get(v.split(":", 1)[1], "")
        elif v.startswith("meta:"):
            m = t.meta.get(v.split(":", 1)[1].strip())
            piece = "" if m is None else str(m)
        else:
            piece = ""
        n += len(piece)
        if max_chars is not None and n > max_chars:
            raise _too_long(n, max_chars)
        out.append(piece)
    return "".join(out)


def parse_rule(text: str, *, captioners: list[str] | None = None,
               questions: list[str] | None = None, has_ocr: bool = True) -> Rule:
    """Parse and check one rule. ``captioners``/``questions``, when given, are what the
    pipeline produces; a placeholder naming anything else is an error."""
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    if not sep:
        raise EditRuleError(f"edit rule {text!r} has no kind; write KIND:ARG with KIND one of "
                            f"template, replace, regex, style")
    if kind == "template":
        for ph in _placeholders(arg):
            if ph in ("caption", "prompt"):
                if ph == "caption" and captioners is not None and not captioners:
                    raise EditRuleError(f"template {arg!r} uses {{caption}} but no captioner runs")
                continue
            if ph == "ocr":
                if not has_ocr:
                    raise EditRuleError(f"template {arg!r} uses {{ocr}} but OCR is off")
                continue
            prefix, colon, name = ph.partition(":")
            if colon and prefix in ("caption", "vqa"):  # must name what the pipeline produces
                known = captioners if prefix == "caption" else questions
                if known is not None and name not in known:
                    says = (f"names captioner {name!r}, which is not among {captioners}"
                            if prefix == "caption" else
                            f"asks {name!r}, which is not among the VQA questions {questions}")
                    raise EditRuleError(f"template {arg!r}: {{{ph}}} {says}")
                continue
            if ph.startswith("meta:"):  # per item: a missing field fills in as empty
                if not ph.split(":", 1)[1].strip():
                    raise EditRuleError(f"template {arg!r}: {{meta:}} needs a field name, "
                                        f"e.g. {{meta:caption}}")
                continue
            raise EditRuleError(
                f"template {arg!r}: unknown placeholder {{{ph}}}; use {{caption}}, "
                f"{{caption:NAME}}, {{ocr}}, {{vqa:QUESTION}}, {{meta:NAME}} or {{prompt}}")
        return Rule("template", arg)
    if kind == "replace":
        old, eq, new = arg.partition("=")
        if not eq or not old:
            raise EditRuleError(f"replace rule {text!r}: write replace:OLD=NEW")
        pat = regex.compile(r"(?<!\w)" + regex.escape(old) + r"(?!\w)", regex.IGNORECASE)
        return Rule("replace", arg, (pat, new))
    if kind == "regex":
        m = re.fullmatch(r"/((?:\\.|[^/\\])*)/((?:\\.|[^/\\])*)/([ims]*)", arg)
        if not m:
            raise EditRuleError(f"regex rule {text!r}: write regex:/PATTERN/REPLACEMENT/FLAGS "
                                f"(escape / as \\/)")
        pattern, repl, flags = m.groups()
        pattern = pattern.replace("\\/", "/")
        repl = repl.replace("\\/", "/")
        fl = 0
        for f in flags:
            fl |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}[f]
        try:
            # the stdlib parses the replacement eagerly: it checks its group references
            re.compile(pattern, fl).sub(repl, "")
            compiled = regex.compile(pattern, fl | regex.VERSION0)  # runs with a time budget
        except (re.error, regex.error) as e:
            raise EditRuleError(f"regex rule {text!r}: {e}") from None
        return Rule("regex", arg, (compiled, repl))
    if kind == "style":
        name = arg.strip().lower()
        if name not in STYLES:
            raise EditRuleError(f"unknown style {arg!r}; styles: {', '.join(sorted(STYLES))}")
        return Rule("style", name)
    raise EditRuleError(f"unknown edit rule kind {kind!r} in {text!r}; "
                        f"use template, replace, regex or style")


def parse_rules(rules: list[str], **ctx) -> list[Rule]:
    return [parse_rule(r, **ctx) for r in rules]


def build_prompt(rules: list[Rule], texts: Texts, max_chars: int | None = None,
                 timeout: float | None = None) -> str:
    """Apply ``rules`` in order. With ``max_chars``, the prompt is checked after each rule
    (and while a template is filled); ``timeout``: CPU seconds each regex rule may take."""
    prompt = texts.base_prompt()
    for r in rules:
        prompt = r.apply(prompt, texts, max_chars, timeout)
        if max_chars is not None and len(prompt) > max_chars:
            raise _too_long(len(prompt), max_chars)
    return " ".join(prompt.split())
