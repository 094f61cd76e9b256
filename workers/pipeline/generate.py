"""Generate: the chunk's prompts (and, for image-to-image, its source images) to new images."""
from __future__ import annotations

from workers.images import ItemError
from workers.pipeline.read import read_images
from workers.pipeline.run import error_text, load, run_sliced
from workers.pipeline.score import score_outputs
from workers.pipeline.write import start_outputs
from workers.records import ComposeState, Item, ResultRecord
from workers.settings import get_settings
from workers.stages import table
from workers.stages.score import output_key


def generate(state: ComposeState) -> None:
    """Fill ``outputs`` (stored images) of every record without an error, in place."""
    spec = state.spec
    todo = [r for r in state.records if not r.error]
    if not todo or not spec.generator:
        return
    decl = table.get("generate", spec.generator)
    for r in todo:
        r.models[decl.key] = spec.model_ref("generate", spec.generator)
    sources = None
    if table.IMAGE in decl.consumes:
        imgs = read_images([Item(id=r.id, image=r.image) for r in todo])
        for r in todo:
            if isinstance(imgs[r.id], ItemError):
                r.error = str(imgs[r.id])
        todo = [r for r in todo if not r.error]
        sources = [imgs[r.id] for r in todo]
    if todo:
        _run(state, decl, todo, sources)


def _fail(records: list[ResultRecord], msg: str) -> None:
    for r in records:
        r.error = msg


def _run(state: ComposeState, decl: table.Decl, todo: list[ResultRecord], sources) -> None:
    from workers.stages.generate import item_seeds

    spec = state.spec
    try:
        backend = load(spec, "generate", decl.name)
    except Exception as e:
        return _fail(todo, f"model_unavailable: {decl.key}: {error_text(e)}")
    n, limit = spec.n, get_settings().max_outputs_per_item
    if n > limit:  # `itx submit` refuses this; a chunk that comes another way gets errors
        return _fail(todo, f"too_many_outputs: {n} images asked, the limit is {limit} per item")
    w, h = spec.width_height
    kwargs = dict(width=w, height=h, steps=spec.steps, n=n, strength=spec.strength,
                  guidance_scale=spec.guidance, **backend.spec_kwargs(spec))
    for r in todo:  # a cascade names the model of every stage it runs at this size
        r.models.update(backend.stage_refs(spec))
    prompts = [r.prompt for r in todo]
    seeds = item_seeds(spec.seed, [r.id for r in todo])  # stable per item, any chunking
    made, uploads = [], []

    def stored(start: int, outs: list) -> None:  # each mini-batch, while the next one runs
        part = []
        for r, images in zip(todo[start:start + len(outs)], outs):
            if isinstance(images, ItemError):
                r.error = str(images)
                continue
            for k, flag in enumerate(getattr(images, "nsfw", None) or []):
                if flag is not None:  # the safety checker's verdict (None: no checker)
                    r.flags[output_key("nsfw", k)] = bool(flag)
            part.append((r, images))
        made.extend(part)
        uploads.extend(start_outputs(state.batch, part))

    try:
        _, per = run_sliced(backend, decl.key, [prompts, sources, seeds], kwargs, state.batch,
                            on_part=stored)
    except BaseException:  # cancelled, or out of time: items whose images are stored
        for f in uploads:      # keep them (finished), the others get none
            f.exception()
        for r, _ in made:
            if None in r.outputs:
                r.outputs = []
            else:
                r.timings_ms[decl.key] = None
        raise
    for r, _ in made:
        r.timings_ms[decl.key] = round(per, 1)
    score_outputs(spec, made)  # --score: while the images are in memory
    for f in uploads:
        f.result()
