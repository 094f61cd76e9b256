"""Operator limits on what a submitter's spec and manifest rows may ask for.

Submitters are not operators: their edit rules, questions and generation settings are
bounded here (settings in ``workers.settings``), refused up front where the spec is known
(``itx submit``/``itx run`` exit 2) and turned into error records where they come from a
manifest row or a crafted chunk. See docs/guarantees.md, "Limits".
"""
from __future__ import annotations

from collections.abc import Sequence

from workers.settings import get_settings


class LimitError(ValueError):
    """``kind: message``; the kind is the error record's."""

    def __init__(self, kind: str, msg: str):
        self.kind = kind
        super().__init__(f"{kind}: {msg}")


def check_program(edits: Sequence[str] = (), questions: Sequence[str] = ()) -> None:
    """At most ITX_MAX_EDIT_RULES rules of at most ITX_MAX_EDIT_RULE_CHARS characters each,
    at most ITX_MAX_QUESTIONS questions of at most ITX_MAX_QUESTION_CHARS each."""
    s = get_settings()
    for values, what, one, most, each, kinds in (
            (edits, "edit rules", "an edit rule", s.max_edit_rules, s.max_edit_rule_chars,
             ("too_many_rules", "rule_too_long", "EDIT_RULES", "EDIT_RULE_CHARS")),
            (questions, "questions", "a question", s.max_questions, s.max_question_chars,
             ("too_many_questions", "question_too_long", "QUESTIONS", "QUESTION_CHARS"))):
        if len(values) > most:
            raise LimitError(kinds[0], f"{len(values)} {what}; the limit is {most} "
                             f"(ITX_MAX_{kinds[2]})")
        for v in values:
            if len(v) > each:
                raise LimitError(kinds[1], f"{one} of {len(v)} characters; the limit is "
                                 f"{each} (ITX_MAX_{kinds[3]})")


def check_cost(spec) -> None:
    """GPU cost of a resolved spec: steps, output pixels and images per item."""
    s = get_settings()
    check_program(spec.edits, spec.vqa)
    if not spec.generator:
        return
    if spec.steps and spec.steps > s.max_steps:
        raise LimitError("too_many_steps", f"--steps {spec.steps} is over the limit of "
                         f"{s.max_steps} (ITX_MAX_STEPS)")
    w, h = spec.width_height
    if w * h > s.max_output_pixels:
        raise LimitError("too_many_pixels", f"--size {spec.size} is {w * h} pixels, over the "
                         f"limit of {s.max_output_pixels} (ITX_MAX_OUTPUT_PIXELS)")
    if spec.n > s.max_outputs_per_item:
        raise LimitError("too_many_outputs", f"--n {spec.n} is over the limit of "
                         f"{s.max_outputs_per_item} generated images per item "
                         f"(ITX_MAX_OUTPUTS_PER_ITEM)")


def cap(text: str | None, n: int | None = None) -> str | None:
    """``text`` cut to ``n`` characters (default ITX_MAX_ECHO_CHARS) with a marker: what records
    echo back of user input (sources, messages that quote it)."""
    if text is None:
        return None
    n = n or get_settings().max_echo_chars
    return text if len(text) <= n else f"{text[:n]}… [{len(text) - n} more characters]"
