"""Compose: merge a chunk's stage partials into result records and build each prompt."""
from __future__ import annotations

import logging

from workers.images import ItemError
from workers.pipeline import score
from workers.pipeline.run import header_stages, run_stage
from workers.records import Chunk, ComposeState, Item, ResultRecord, StagePartial
from workers.settings import get_settings
from workers.stages import table
from workers.stages.score import BEST

log = logging.getLogger(__name__)


def complete_partials(partials: list[StagePartial], chunk: Chunk) -> list[StagePartial]:
    """Exactly one partial per header stage, whatever the chord delivered.

    A header task that ran twice (its worker died after the result was stored, and the broker
    redelivered it) can reach compose twice while another stage is missing; a stage can also
    be absent when its result was lost with a broker restart. Duplicates are dropped (the
    copy with most results stays); a missing stage is run here, inline, with the same backend
    (a pool without its weights records ``model_unavailable``)."""
    by_stage: dict[str, StagePartial] = {}
    for p in partials:
        old = by_stage.get(p.stage)
        if old is None or len(p.results) > len(old.results):
            by_stage[p.stage] = p
    out = []
    for stage, name in header_stages(chunk.spec, chunk.items):
        key = f"{stage}:{name}"
        if key not in by_stage:
            log.warning("chunk %s/%s: no %s partial reached compose; running it here",
                        chunk.batch, chunk.chunk, key)
            by_stage[key] = run_stage(chunk, stage, name)
        out.append(by_stage[key])
    return out


def merge(rec: ResultRecord, partial: StagePartial) -> None:
    """One stage's result, error, model and timing for ``rec``'s item, where the stage table
    says it goes in the record."""
    i, key = rec.id, partial.stage
    stage, name = key.split(":", 1)
    rec.models[key] = partial.model
    if i in partial.errors and not rec.error:
        rec.error = partial.errors[i]
    if i in partial.results:
        rec.timings_ms[key] = partial.ms.get(i)
        if i in partial.reused:
            rec.reused.append(key)
        st, val = table.STAGES[stage], partial.results[i]
        if st.keyed:
            getattr(rec, st.field)[name] = val
        else:
            setattr(rec, st.field, val)


def build_prompt(rec: ResultRecord, item: Item, chunk: Chunk) -> None:
    """The item's prompt from its texts and the spec's (and its own) edit rules, within the
    limits (workers/limits.py): each rule's time budget, the prompt's length after each rule."""
    from workers.limits import LimitError, check_program
    from workers.stages.edit import EditRuleError, RuleLimitError, Texts, build_prompt as apply_rules

    spec, s = chunk.spec, get_settings()
    try:
        check_program(list(spec.edits) + list(item.edit or []),
                      list(spec.vqa) + list(item.questions or []))
        rules = spec.rules(extra_edits=item.edit, extra_questions=item.questions)
        texts = Texts(captions=rec.captions, ocr=rec.ocr.text if rec.ocr else "",
                      vqa=rec.vqa, caption_model=rec.prompt_caption or (
                          None if spec.caption_for_prompt == BEST else spec.caption_for_prompt),
                      meta=item.meta or {})
        prompt = apply_rules(rules, texts, max_chars=s.max_prompt_chars,
                             timeout=s.edit_rule_timeout_s)
        if not prompt and spec.generator:
            raise ItemError("empty_prompt", "the edit rules left no text to generate from "
                            "(no caption, OCR found no text)")
        rec.prompt = prompt
    except EditRuleError as e:
        rec.error = f"bad_edit_rule: {e}"
    except (ItemError, RuleLimitError, LimitError) as e:
        rec.error = str(e)


def compose(partials: list[StagePartial], chunk: Chunk, attempts: int = 1,
            store_retries: int = 0) -> ComposeState:
    """Every item's record with its stage outputs and prompt. An item's ``attempts`` is the
    most runs of any of its chunk's tasks; ``store_retries`` those of all of them."""
    from workers.pipeline import reuse

    partials = complete_partials(partials, chunk)
    reuse.keep(chunk, partials)  # in the background (reuse.flush waits for it)
    attempts = max([attempts] + [p.attempts or 1 for p in partials])
    retried = store_retries + sum(p.store_retries or 0 for p in partials)
    records = []
    for item in chunk.items:
        rec = ResultRecord.of(item)
        rec.attempts, rec.store_retries = attempts + (item.prior_attempts or 0), retried
        for p in partials:
            merge(rec, p)
        records.append(rec)
    src = score.score_captions(chunk.spec, records)  # --score, or the prompt needs `best`
    for item, rec in zip(chunk.items, records):
        if not rec.error:
            build_prompt(rec, item, chunk)
    score.score_prompts(chunk.spec, records, src)
    return ComposeState(batch=chunk.batch, chunk=chunk.chunk, spec=chunk.spec, records=records)


def timed_out(chunk: Chunk, what: str, attempts: int = 1) -> ComposeState:
    """Every item's record as a ``timeout`` error (an item that failed earlier keeps its own
    error): what compose writes when it overruns its soft time limit."""
    records = []
    for item in chunk.items:
        rec = ResultRecord.of(item)
        rec.attempts = attempts
        rec.error = rec.error or f"timeout: {what} overran its time limit"
        records.append(rec)
    return ComposeState(batch=chunk.batch, chunk=chunk.chunk, spec=chunk.spec, records=records)
