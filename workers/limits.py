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
    if len(edits) > s.max_edit_rules:
        raise LimitError("too_many_rules", f"{len(edits)} edit rules; the limit is "
                         f"{s.max_edit_rules} (ITX_MAX_EDIT_RULES)")
    for e in edits:
        if len(e) > s.max_edit_rule_chars:
            raise LimitError("rule_too_long", f"an edit rule of {len(e)} characters; the limit "
                             f"is {s.max_edit_rule_chars} (ITX_MAX_EDIT_RULE_CHARS)")
    if len(questions) > s.max_questions:
        raise LimitError("too_many_questions", f"{len(questions)} questions; the limit is "
                         f"{s.max_questions} (ITX_MAX_QUESTIONS)")
    for q in questions:
        if len(q) > s.max_question_chars:
            raise LimitError("question_too_long", f"a question of {len(q)} characters; the "
                             f"limit is {s.max_question_chars} (ITX_MAX_QUESTION_CHARS)")


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
