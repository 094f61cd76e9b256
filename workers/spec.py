"""PipelineSpec: what to run for every item. Small JSON; travels inside each chunk.

Shared by the orchestrator (which validates it before any work starts) and the
workers (which run it). No heavy imports.
"""
from __future__ import annotations

import hashlib
import json
import re

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from workers.models.profiles import PROFILES, defaults
from workers.stages import table
from workers.stages.edit import parse_rules
from workers.stages.score import BEST

OFF = ("none", "off", "")


class PipelineSpec(BaseModel):
    """Stage options. ``None`` means "the profile's default"; ``"none"`` turns a stage off."""

    model_config = ConfigDict(extra="forbid")

    profile: str | None = None
    ocr: str | None = None
    captioners: list[str] | None = None
    # whose caption {caption} and the base prompt use; "best": the highest CLIPScore's
    caption_for_prompt: str | None = None
    vqa: list[str] = Field(default_factory=list)
    vqa_backend: str | None = None  # who answers them; None: the profile's
    edits: list[str] = Field(default_factory=list)
    generator: str | None = None
    steps: int | None = Field(None, ge=1, le=500)  # None: the profile's default
    size: str | None = None  # WIDTHxHEIGHT; None: the profile's default
    seed: int = Field(0, ge=0, lt=2**63)
    n: int = Field(1, ge=1)
    strength: float = Field(0.75, gt=0.0, le=1.0)
    guidance: float | None = Field(None, ge=0.0, le=50.0)  # None: the generator family's
    negative_prompt: str | None = Field(None, max_length=2000)  # what generation steers away from
    caption_prompt: str | None = Field(None, max_length=2000)  # what chat VLMs are asked (or a
    #                                     Florence-2 task token such as <DETAILED_CAPTION>)
    models: dict[str, str] = Field(default_factory=dict)  # "<stage>:<backend>" -> ref override
    # take header stage outputs an earlier run kept for the same image, model and options
    # (workers/pipeline/reuse.py); False (`--no-reuse`) recomputes them. Not in the fingerprint
    reuse: bool = True
    score: bool = False  # reference-free scores in every record (workers.stages.score)
    scorer: str | None = None  # the score backend; None: the profile's
    # set on what resolved() returns: there None means "off", so resolving again must not
    # read it as "the profile's default"
    _resolved: bool = PrivateAttr(default=False)

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", v)
        if not m:
            raise ValueError(f"size {v!r}: write WIDTHxHEIGHT, e.g. 512x512")
        w, h = int(m.group(1)), int(m.group(2))
        if w % 8 or h % 8 or not (8 <= w <= 4096 and 8 <= h <= 4096):
            raise ValueError(f"size {v!r}: width and height must be multiples of 8 in 8..4096")
        return f"{w}x{h}"

    @model_validator(mode="after")
    def _check(self):
        if self.profile is not None and self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; choose one of {', '.join(PROFILES)}")
        for stage, name in (("ocr", self.ocr), ("generate", self.generator)):
            if name is not None and name.lower() not in OFF:
                try:
                    table.get(stage, name.lower())
                except ValueError as e:
                    raise ValueError(f"{e} or none") from None
        if self.vqa_backend is not None:
            table.get("vqa", self.vqa_backend)
        if self.scorer is not None:
            table.get("score", self.scorer)
        for c in self.captioners or []:
            table.get("caption", c)
        for key in self.models:
            stage, _, name = key.partition(":")
            table.get(stage, name)
        if self.captioners is not None and len(set(self.captioners)) != len(self.captioners):
            raise ValueError("a captioner is listed twice")
        if self.caption_for_prompt == BEST and self.captioners is not None \
                and not self.captioners:
            raise ValueError("caption_for_prompt 'best' needs at least one captioner")
        if self.caption_for_prompt and self.caption_for_prompt != BEST \
                and self.captioners is not None and self.caption_for_prompt not in self.captioners:
            raise ValueError(f"caption_for_prompt {self.caption_for_prompt!r} is not among the "
                             f"captioners {self.captioners}")
        return self

    # --- resolution against a profile ---------------------------------------
    def resolved(self, profile: str) -> "PipelineSpec":
        """Fill every default from the profile, so workers run exactly what was asked.
        Idempotent: a resolved spec is returned as it is."""
        if self._resolved:
            return self
        p = self.profile or profile
        d = defaults(p)
        ocr = d["ocr"] if self.ocr is None else self.ocr.lower()
        gen = d["generator"] if self.generator is None else self.generator.lower()
        caps = list(d["captioners"] if self.captioners is None else self.captioners)
        # the generator family's own defaults, then the profile's (tiny-random keeps its
        # small size and few steps for every family: smoke runs stay fast)
        fam = {} if gen in OFF else table.get("generate", gen).defaults
        size_steps = fam if d.get("family_defaults", True) else {}
        spec = self.model_copy(update=dict(
            profile=p, ocr=None if ocr in OFF else ocr, captioners=caps,
            generator=None if gen in OFF else gen, vqa_backend=self.vqa_backend or d["vqa"],
            size=self.size or size_steps.get("size") or d["size"],
            steps=self.steps or size_steps.get("steps") or d["steps"],
            guidance=fam.get("guidance", 7.5) if self.guidance is None else self.guidance,
            scorer=(self.scorer or d["scorer"]) if self.score or self.caption_for_prompt == BEST
            else None,
            caption_for_prompt=self.caption_for_prompt or (caps[0] if caps else None)))
        spec.rules(extra_questions=[])  # checks every rule before any work starts
        spec._resolved = True
        return spec

    def rules(self, extra_edits: list[str] = (), extra_questions: list[str] = ()):
        return parse_rules(list(self.edits) + list(extra_edits),
                           captioners=self.captioners,
                           questions=list(self.vqa) + list(extra_questions),
                           has_ocr=self.ocr is not None)

    @property
    def width_height(self) -> tuple[int, int]:
        w, h = (self.size or "512x512").split("x")
        return int(w), int(h)

    def model_ref(self, stage: str, backend: str) -> str:
        from workers.models.profiles import model_ref

        return self.models.get(f"{stage}:{backend}") or model_ref(stage, backend, self.profile or "base")

    def fingerprint(self) -> str:
        """A hash of everything that changes an item's result (for deterministic item ids)."""
        d = self.model_dump(mode="json", exclude={"reuse"})
        for k in ("score", "scorer"):  # added later: off, they leave earlier ids as they were
            if not d[k]:
                d.pop(k)
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
