"""The data that flows through itx, as pydantic models: parsed once per task, validated when
written to the store and when read back.

    Item            one input image of a chunk (what staging wrote)
    Chunk           a batch's unit of work: spec + items; tasks get a Pointer to its ledger
    StagePartial    one stage's output over a chunk: results, errors and timings by item id
    ResultRecord    one item's outcome: runs/<batch>/results/<id>.json, the durable truth
    ComposeState    compose's records on their way to generate
    ChunkSummary    what the last task of a chunk returns (small: it goes through Redis)

``docs/record.schema.json`` is ResultRecord's JSON Schema (``python -m workers.records``
writes it; a test keeps it current). New fields are optional, so old records stay valid;
fields this version does not know are kept as they are.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.spec import PipelineSpec


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")

    def dump(self) -> dict:
        """JSON-able dict without unset optional extras (what goes to the store or Redis)."""
        return self.model_dump(mode="json", exclude_none=False)


class Item(_Model):
    id: str
    source: str | None = None
    image: str | None = None  # URI of the staged image in the store
    error: str | None = None  # "kind: message" when staging already failed
    questions: list[str] = Field(default_factory=list)  # per-item VQA questions (manifests)
    edit: list[str] = Field(default_factory=list)  # per-item edit rules (manifests)
    coco_id: int | None = None
    file_name: str | None = None
    prior_attempts: int | None = None  # `itx retry`: the attempts of the record it replaces
    meta: dict[str, Any] | None = None  # a dataset sample's key, shard and kept columns
    # staging wrote the image (its content was not in the store): no earlier batch kept
    # stage outputs for it, so workers skip its reuse lookup (workers/pipeline/reuse.py)
    new: bool | None = None


class Pointer(_Model):
    """What crosses the broker for an object kept in the store: its key and the submission's
    nonce (workers cache objects per process under both)."""

    ref: str
    nonce: str | None = None
    stage: str | None = None  # a partial's stage, so compose can tell them apart unread
    attempts: int | None = None
    store_retries: int | None = None


class Chunk(_Model):
    batch: str
    chunk: int = 0
    spec: PipelineSpec
    items: list[Item]
    ref: str | None = None  # the ledger key, when the chunk travels by reference
    nonce: str | None = None

    def pointer(self) -> Pointer:
        return Pointer(ref=self.ref, nonce=self.nonce)

    def ledger(self) -> dict:
        """The ledger object: the whole chunk plus its ids (status and resume read those)."""
        d = self.dump()
        d.pop("ref", None)
        d.pop("nonce", None)
        return {"ids": [it.id for it in self.items], **d}


class StagePartial(_Model):
    stage: str  # "caption:git"
    model: str = ""  # the ref its backend loaded
    results: dict[str, Any] = Field(default_factory=dict)
    errors: dict[str, str] = Field(default_factory=dict)  # id -> "kind: message"
    ms: dict[str, float | None] = Field(default_factory=dict)
    attempts: int | None = None
    store_retries: int | None = None
    reused: list[str] = Field(default_factory=list)  # ids whose result came from reuse/
    cancelled: bool = False  # the batch was cancelled: compose writes no records

    @classmethod
    def failed(cls, stage: str, items: list[Item], msg: str) -> "StagePartial":
        return cls(stage=stage, errors={it.id: msg for it in items})


class OcrLine(BaseModel):
    text: str
    box: list[list[int]]
    conf: float


class OcrResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str = ""
    lines: list[OcrLine] = Field(default_factory=list)


class ResultRecord(_Model):
    """One item's outcome. ``error`` is None or ``"kind: message"`` with a stable kind."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    id: str
    source: str | None = None
    image: str | None = None
    ocr: OcrResult | None = None
    captions: dict[str, str] = Field(default_factory=dict)
    vqa: dict[str, str] = Field(default_factory=dict)
    prompt: str | None = None
    # with caption_for_prompt=best: the captioner whose caption (highest CLIPScore) the
    # prompt started from
    prompt_caption: str | None = None
    outputs: list[str | None] = Field(default_factory=list)
    # reference-free scores (--score): "clip:caption:<c>", "clip:prompt", "clip:output:<k>",
    # "clip-i:output:<k>", "ocr-readback:output:<k>" (see workers.stages.score)
    scores: dict[str, float] = Field(default_factory=dict)
    # verdicts per generated image, e.g. the safety checker's "nsfw:output:<k>"
    flags: dict[str, bool] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)  # "stage:backend" -> ref
    timings_ms: dict[str, float | None] = Field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    store_retries: int = 0
    finished_at: float | None = None
    coco_id: int | None = None
    file_name: str | None = None
    reused: list[str] = Field(default_factory=list)  # "stage:backend" taken from an earlier run
    meta: dict[str, Any] | None = None  # dataset inputs: key, shard, kept columns (capped)

    @classmethod
    def of(cls, item: Item) -> "ResultRecord":
        return cls(id=item.id, source=item.source, image=item.image, error=item.error,
                   coco_id=item.coco_id, file_name=item.file_name, meta=item.meta)

    def dump(self) -> dict:
        d = self.model_dump(mode="json")
        for k in ("coco_id", "file_name", "meta", "prompt_caption"):  # only where they apply
            if d.get(k) is None:
                d.pop(k, None)
        return d

    @property
    def kind(self) -> str | None:
        """The error's kind (``not_an_image``, ``timeout``, …), or None."""
        return self.error.split(":", 1)[0] if self.error else None


class ComposeState(_Model):
    batch: str
    chunk: int = 0
    spec: PipelineSpec
    records: list[ResultRecord]


class ChunkSummary(_Model):
    batch: str
    chunk: int = 0
    done: int
    failed: int
    ids: list[str]
    cancelled: int = 0  # items left without a record because the batch was cancelled


def record_schema() -> dict:
    schema = ResultRecord.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "itx result record"
    return schema


if __name__ == "__main__":  # python -m workers.records > docs/record.schema.json
    json.dump(record_schema(), sys.stdout, indent=1)
    sys.stdout.write("\n")
