"""Chunk processing: read a chunk's images from the store, run one stage over them in
mini-batches, merge stage results, build prompts, generate, write result records.

Plain functions over JSON-able dicts; ``workers.tasks`` wraps each in a Celery task and
``itx run`` calls the very same tasks eagerly. A chunk is::

    {"batch": "b1", "chunk": 0, "spec": {...resolved PipelineSpec...},
     "items": [{"id": "…", "source": "photos/a.jpg", "image": "s3://…/inputs/….jpg",
                "error": null, "questions": [], "edit": [], "coco_id": 42}, …]}

A stage returns a *partial*: ``{"stage": "caption:git", "model": ref, "results": {id: value},
"errors": {id: "kind: message"}, "ms": {id: ms}}``. One bad item never fails its chunk.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from workers.images import ItemError, decode_image
from workers.settings import get_settings
from workers.spec import PipelineSpec
from workers.storage import OutsideStoreError, NotFoundError, StoreError, TransientStoreError, open_store
from workers.storage import TooLargeError, store_retries

log = logging.getLogger(__name__)

class _Lru:
    """A small thread-safe least-recently-used map, one per process."""

    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._d:
                return default
            self._d.move_to_end(key)
            return self._d[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


_MISS = object()

# --- reading images: one read and decode per image per process, shared by stages -------
_IMAGES = _Lru(96)  # image URI -> decoded image or ItemError
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="itx-read")


def _read_one(uri: str):
    img = _IMAGES.get(uri, _MISS)
    if img is not _MISS:
        return img
    s = get_settings()
    try:
        data = open_store().get(uri, max_bytes=s.max_image_bytes)  # never reads a huge object
        img = decode_image(data, max_pixels=s.max_pixels, max_bytes=s.max_image_bytes)
    except OutsideStoreError as e:
        img = ItemError("outside_store", str(e))
    except TooLargeError as e:
        img = ItemError("file_too_large", str(e))
    except NotFoundError as e:
        img = ItemError("not_found", str(e))
    except TransientStoreError:
        raise  # the task retries with backoff
    except StoreError as e:
        img = ItemError("store_error", str(e))
    except ItemError as e:
        img = e
    _IMAGES.put(uri, img)
    return img


def read_images(items: list[dict]) -> dict[str, object]:
    """``id -> PIL image | ItemError`` for items without an earlier error; reads in parallel."""
    todo = [it for it in items if not it.get("error")]
    uris = [it.get("image") or "" for it in todo]
    out = {}
    for it, res in zip(todo, _POOL.map(lambda u: _read_one(u) if u else
                                       ItemError("no_image", "item has no image URI"), uris)):
        out[it["id"]] = res
    return out


def _err(e: BaseException) -> str:
    return str(e) if isinstance(e, ItemError) else f"{type(e).__name__}: {e}"


# --- chunks by reference: a pointer crosses the broker, the data stays in the store --------
# ``itx submit`` writes each chunk (spec and items) to its ledger object and sends tasks
# ``{"ref", "nonce"}``; stage partials and compose's records go the same way
# (``runs/<batch>/parts/<chunk>/<name>.json``). What Redis carries per chunk is then a few
# hundred bytes, however many items, captions and records it holds. A chunk sent whole
# (no "ref") is handled as before. Objects read or written here are kept per process under
# their key and the chunk's nonce (new for every submission), so the stages of one chunk
# that run in one process read its chunk once and compose finds their partials in memory.
_OBJECTS = _Lru(64)  # (store, key, nonce) -> a chunk, partial or state read or written here


def _fetch(ref: str, nonce) -> object:
    key = (open_store().uri, ref, nonce)
    obj = _OBJECTS.get(key, _MISS)
    if obj is _MISS:
        obj = open_store().get_json(ref)
        _OBJECTS.put(key, obj)
    return obj


def load_chunk(msg: dict) -> dict:
    """The whole chunk for a task's message: the message itself, or the chunk it points to."""
    if "items" in msg or not msg.get("ref"):
        return msg
    return {**_fetch(msg["ref"], msg.get("nonce")), "ref": msg["ref"], "nonce": msg.get("nonce")}


def load_state(msg: dict) -> dict:
    """compose's output for generate: the state itself, or the stored state it points to."""
    if "records" in msg or not msg.get("ref"):
        return msg
    return copy.deepcopy(_fetch(msg["ref"], msg.get("nonce")))  # generate edits its records


def _load_partial(p: dict) -> dict:
    return p if "results" in p or not p.get("ref") else _fetch(p["ref"], p.get("nonce"))


def hand_on(chunk: dict, name: str, obj: dict) -> dict:
    """What a task returns: ``obj`` itself, or (for a chunk sent by reference) a pointer to
    ``obj`` written to the store under a deterministic key (a re-run overwrites it)."""
    if not chunk.get("ref"):
        return obj
    key = f"runs/{chunk['batch']}/parts/{int(chunk['chunk']):06d}/{name.replace(':', '-')}.json"
    open_store().put_json(key, obj)
    _OBJECTS.put((open_store().uri, key, chunk.get("nonce")), obj)
    out = {"ref": key, "nonce": chunk.get("nonce")}
    if "stage" in obj:
        out["stage"] = obj["stage"]
    return out


# --- running one stage over a chunk -------------------------------------------------------
def run_stage(stage: str, name: str, chunk: dict, *, extra_columns=(), call_kwargs=None) -> dict:
    """Run backend ``stage``/``name`` over the chunk's good images in mini-batches."""
    from workers.models.cache import load_backend

    spec = PipelineSpec.model_validate(chunk["spec"])
    items = chunk["items"]
    key = f"{stage}:{name}"
    partial = {"stage": key, "model": spec.model_ref(stage, name),
               "results": {}, "errors": {}, "ms": {}}
    images = read_images(items)
    good = [(i, img) for i, img in images.items() if not isinstance(img, ItemError)]
    for i, img in images.items():
        if isinstance(img, ItemError):
            partial["errors"][i] = str(img)
    if not good:
        return partial
    try:
        backend = load_backend(stage, name, ref=partial["model"], profile=spec.profile)
    except Exception as e:
        msg = f"model_unavailable: {key}: {_err(e)}"
        log.error(msg)
        for i, _ in good:
            partial["errors"][i] = msg
        return partial
    ids = [i for i, _ in good]
    imgs = [img for _, img in good]
    cols = [imgs] + [[col[i] for i in ids] for col in extra_columns]  # columns keyed by id
    outs, per = run_isolated(backend, key, cols, call_kwargs or {})
    for i, out in zip(ids, outs):
        if isinstance(out, ItemError):
            partial["errors"][i] = str(out)
        else:
            partial["results"][i] = out
            partial["ms"][i] = round(per, 1)
    return partial


def run_isolated(backend, key: str, cols: list, kwargs: dict) -> tuple[list, float]:
    """Run ``backend`` over parallel columns (``None`` passes through) in its mini-batches.
    If a batch fails, run item by item, so one bad item costs only itself: its output is an
    ``ItemError``. Returns the outputs and the milliseconds per item."""
    n = len(cols[0])
    t0 = time.perf_counter()
    try:
        outs = backend.run(*cols, **kwargs)
    except Exception as e:
        if _is_time_limit(e):
            raise
        log.warning("%s failed on a batch (%s); retrying item by item", key, _err(e))
        outs = []
        for j in range(n):
            try:
                outs.append(backend.run(*[None if c is None else [c[j]] for c in cols],
                                        **kwargs)[0])
            except Exception as e1:
                if _is_time_limit(e1):
                    raise
                outs.append(ItemError("stage_failed", f"{key}: {_err(e1)}"))
    return outs, (time.perf_counter() - t0) * 1000 / max(1, n)


def _is_time_limit(e: BaseException) -> bool:
    return type(e).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded")


def ocr_chunk(chunk: dict) -> dict:
    chunk = load_chunk(chunk)
    spec = PipelineSpec.model_validate(chunk["spec"])
    return hand_on(chunk, f"ocr:{spec.ocr}", run_stage("ocr", spec.ocr, chunk))


def caption_chunk(chunk: dict, model: str) -> dict:
    chunk = load_chunk(chunk)
    return hand_on(chunk, f"caption:{model}", run_stage("caption", model, chunk))


def item_questions(spec: PipelineSpec, item: dict) -> list[str]:
    qs = list(spec.vqa) + [q for q in item.get("questions") or [] if q not in spec.vqa]
    return qs


def _run_vqa(spec: PipelineSpec, chunk: dict) -> dict:
    questions = {it["id"]: item_questions(spec, it) for it in chunk["items"]}
    return run_stage("vqa", "blip-vqa", chunk, extra_columns=[questions])


def vqa_chunk(chunk: dict) -> dict:
    chunk = load_chunk(chunk)
    spec = PipelineSpec.model_validate(chunk["spec"])
    return hand_on(chunk, "vqa:blip-vqa", _run_vqa(spec, chunk))


# --- compose: merge partials, build prompts -----------------------------------------------
def record_base(item: dict) -> dict:
    rec = {"id": item["id"], "source": item.get("source"), "image": item.get("image"),
           "ocr": None, "captions": {}, "vqa": {}, "prompt": None, "outputs": [],
           "models": {}, "timings_ms": {}, "error": item.get("error")}
    for k in ("coco_id", "file_name", "meta"):  # meta: dataset inputs (issue 18)
        if item.get(k) is not None:
            rec[k] = item[k]
    return rec


def expected_stages(spec: PipelineSpec, chunk: dict) -> list[str]:
    """The header stages of a chunk: what ``workflow.chunk_canvas`` enqueues and what compose
    needs one partial of each."""
    out = [f"ocr:{spec.ocr}"] if spec.ocr else []
    out += [f"caption:{m}" for m in spec.captioners or []]
    if spec.vqa or any(it.get("questions") for it in chunk["items"]):
        out.append("vqa:blip-vqa")
    return out


def complete_partials(partials: list[dict], chunk: dict) -> list[dict]:
    """Exactly one partial per expected stage, whatever the chord delivered.

    A header task that ran twice (its worker died after the result was stored, and the broker
    redelivered it) can reach compose twice while another stage is missing; a stage can also
    be absent when its result was lost with a broker restart. Duplicates are dropped (the
    copy with most results stays); a missing stage is run here, inline, with the same backend
    (both pools install every stage; one without the weights records ``model_unavailable``).
    ``attempts``/``store_retries`` of a partial sent by reference travel on the pointer."""
    spec = PipelineSpec.model_validate(chunk["spec"])
    by_stage: dict[str, dict] = {}
    for p in partials or []:
        full = dict(_load_partial(p))
        for k in ("attempts", "store_retries"):
            if k in p:
                full[k] = p[k]
        old = by_stage.get(full["stage"])
        if old is None or len(full["results"]) > len(old["results"]):
            by_stage[full["stage"]] = full
    out = []
    for stage in expected_stages(spec, chunk):
        if stage not in by_stage:
            log.warning("chunk %s/%s: no %s partial reached compose; running it here",
                        chunk.get("batch"), chunk.get("chunk"), stage)
            kind, name = stage.split(":", 1)
            by_stage[stage] = _run_vqa(spec, chunk) if kind == "vqa" else \
                run_stage(kind, name, chunk)
        out.append(by_stage[stage])
    return out


def compose_chunk(partials: list[dict], chunk: dict, attempts: int = 1) -> dict:
    from workers.stages.edit import EditRuleError, Texts, build_prompt

    r0 = store_retries()
    chunk = load_chunk(chunk)
    partials = complete_partials(partials, chunk)
    spec = PipelineSpec.model_validate(chunk["spec"])
    limit = get_settings().max_prompt_chars
    # the item's work: the most runs of any of its chunk's tasks, the store retries of all
    attempts = max([attempts] + [p.get("attempts") or 1 for p in partials])
    retried = store_retries() - r0 + sum(p.get("store_retries") or 0 for p in partials)
    records = []
    for item in chunk["items"]:
        rec = record_base(item)
        rec["attempts"], rec["store_retries"] = attempts, retried
        for p in partials or []:
            i = item["id"]
            stage = p["stage"]
            rec["models"][stage] = p["model"]
            if i in p["errors"] and not rec["error"]:
                rec["error"] = p["errors"][i]
            if i in p["results"]:
                val = p["results"][i]
                rec["timings_ms"][stage] = p["ms"].get(i)
                if stage.startswith("ocr:"):
                    rec["ocr"] = val
                elif stage.startswith("caption:"):
                    rec["captions"][stage.split(":", 1)[1]] = val
                elif stage.startswith("vqa:"):
                    rec["vqa"] = val
        if not rec["error"]:
            try:
                rules = spec.rules(extra_edits=item.get("edit") or [],
                                   extra_questions=item.get("questions") or [])
                texts = Texts(captions=rec["captions"], ocr=(rec["ocr"] or {}).get("text", ""),
                              vqa=rec["vqa"], caption_model=spec.caption_for_prompt,
                              meta=item.get("meta") or {})
                prompt = build_prompt(rules, texts)
                if len(prompt) > limit:
                    raise ItemError("prompt_too_long",
                                    f"the prompt has {len(prompt)} characters; the limit is {limit}")
                if not prompt and spec.generator:
                    raise ItemError("empty_prompt", "the edit rules left no text to generate "
                                    "from (no caption, OCR found no text)")
                rec["prompt"] = prompt
            except EditRuleError as e:
                rec["error"] = f"bad_edit_rule: {e}"
            except ItemError as e:
                rec["error"] = str(e)
        records.append(rec)
    out = {"batch": chunk["batch"], "chunk": chunk.get("chunk", 0), "spec": chunk["spec"],
           "records": records}
    if not spec.generator:
        return finish(out)
    return hand_on(chunk, "compose", out)


# --- generate and write -------------------------------------------------------------------
def generate_chunk(state: dict) -> dict:
    r0 = store_retries()
    state = load_state(state)
    spec = PipelineSpec.model_validate(state["spec"])
    store = open_store()
    records = state["records"]
    todo = [r for r in records if not r["error"]]
    if todo:
        w, h = spec.width_height
        name = spec.generator
        key = f"generate:{name}"
        ref = spec.model_ref("generate", name)
        for r in todo:
            r["models"][key] = ref
        sources = None
        if name == "sd-img2img":
            imgs = read_images([{"id": r["id"], "image": r["image"]} for r in todo])
            for r in todo:
                if isinstance(imgs[r["id"]], ItemError):
                    r["error"] = str(imgs[r["id"]])
            todo = [r for r in todo if not r["error"]]
            sources = [imgs[r["id"]] for r in todo]
        if todo:
            _generate(spec, name, ref, todo, sources, store, w, h, state["batch"])
    retried = store_retries() - r0
    for r in records:
        r["store_retries"] = (r.get("store_retries") or 0) + retried
    return finish(state)


def _generate(spec, name, ref, todo, sources, store, w, h, batch):
    from workers.models.cache import load_backend

    key = f"generate:{name}"
    try:
        backend = load_backend("generate", name, ref=ref, profile=spec.profile)
    except Exception as e:
        for r in todo:
            r["error"] = f"model_unavailable: {key}: {_err(e)}"
        return
    n, limit = spec.n, get_settings().max_outputs_per_item
    if n > limit:  # `itx submit` refuses this; a chunk that comes another way gets errors
        for r in todo:
            r["error"] = f"too_many_outputs: {n} images asked, the limit is {limit} per item"
        return
    kwargs = dict(width=w, height=h, steps=spec.steps, n=n,
                  strength=spec.strength, guidance_scale=spec.guidance)
    from workers.stages.generate import item_seeds

    prompts = [r["prompt"] for r in todo]
    seeds = item_seeds(spec.seed, [r["id"] for r in todo])  # stable per item, any chunking
    outs, per = run_isolated(backend, key, [prompts, sources, seeds], kwargs)
    for r, images in zip(todo, outs):
        if isinstance(images, ItemError):
            r["error"] = str(images)
            continue
        r["timings_ms"][key] = round(per, 1)
        r["outputs"] = [None] * len(images)
        r["_images"] = images
    # PNG encoding and uploads run in threads, off the model's critical path
    def put(args):
        r, k, img = args
        return r, k, store.put_image(f"runs/{batch}/images/{r['id']}-{k}.png", img)

    jobs = [(r, k, img) for r in todo if "_images" in r for k, img in enumerate(r["_images"])]
    for r, k, uri in _POOL.map(put, jobs):
        r["outputs"][k] = uri
    for r in todo:
        r.pop("_images", None)


def finish(state: dict) -> dict:
    """Write every record (the store is the durable truth); return a small summary."""
    store = open_store()
    batch = state["batch"]
    done = failed = 0
    recs = state["records"]

    now = time.time()

    def put(rec):
        rec["finished_at"] = now
        store.put_json(f"runs/{batch}/results/{rec['id']}.json", rec)

    list(_POOL.map(put, recs))
    for rec in recs:
        if rec["error"]:
            failed += 1
        else:
            done += 1
    return {"batch": batch, "chunk": state.get("chunk", 0), "done": done, "failed": failed,
            "ids": [r["id"] for r in recs]}
