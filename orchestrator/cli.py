"""The ``itx`` command: a thin layer over the Python API.

Exit codes: 0 every item succeeded, 1 some items failed, 2 usage or set-up errors (one line:
a bad option, a refused batch name, a batch another submitter created, the broker or the store
unreachable), 3 ``--wait`` ended with items still without a record (it says how to continue:
``itx submit --batch NAME --resume --wait``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from workers.stages import table as stage_table

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_show_locals=False,  # locals may hold secrets
                  help="itx: images -> text -> edited text -> images, in-process or on Celery "
                       "GPU pools.")
models_app = typer.Typer(no_args_is_help=True, help="Build, pull, push and list model weights.")
app.add_typer(models_app, name="models")
console = Console(stderr=True)
out_console = Console()


def fail(msg: str, code: int = 2):
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)  # one line
    raise typer.Exit(code)


# --- shared stage options ------------------------------------------------------------------
Profile = Annotated[Optional[str], typer.Option("--profile", "-p",
                    help="Model profile: base, large or tiny-random (default: ITX_PROFILE).")]
def _choices(stage: str) -> str:
    return " | ".join(stage_table.names(stage))


Captioners = Annotated[Optional[str], typer.Option(
    "--captioners", help=f"Comma-separated captioners: {','.join(stage_table.names('caption'))} "
                         f"or HF ids; 'none' for none.")]
Ocr = Annotated[Optional[str], typer.Option("--ocr", help=f"{_choices('ocr')} | none.")]
Vqa = Annotated[Optional[list[str]], typer.Option("--vqa", help="A question for every image "
                                                  "(repeat for more).")]
VqaBackend = Annotated[Optional[str], typer.Option("--vqa-backend",
                                                   help=f"Who answers --vqa: {_choices('vqa')}.")]
Model = Annotated[Optional[list[str]], typer.Option(
    "--model", help="STAGE:BACKEND=REF: load other weights (a hub id or a local path) for a "
                    "backend, e.g. caption:blip=Salesforce/blip-image-captioning-large.")]
Edit = Annotated[Optional[list[str]], typer.Option(
    "--edit", help="Edit rule, applied in order: template:…, replace:a=b, regex:/p/r/, style:NAME.")]
Generator = Annotated[Optional[str], typer.Option("--generator",
                                                  help=f"{_choices('generate')} | none.")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Diffusion steps (default: the "
                                                               "profile's).")]
Size = Annotated[Optional[str], typer.Option("--size", help="Output size WIDTHxHEIGHT, multiples "
                                             "of 8 (default: the profile's).")]
Guidance = Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance "
                     "scale (default: the generator family's, e.g. 7.5 for sd, 0 for turbo/flux).")]
NegativePrompt = Annotated[Optional[str], typer.Option("--negative-prompt", help="What generated "
                           "images should not show (used where guidance is above 1).")]
CaptionPrompt = Annotated[Optional[str], typer.Option("--caption-prompt", help="What chat VLM "
                          "captioners are asked, or a Florence-2 task: <CAPTION>, "
                          "<DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed: the same seed gives the same pixels.")]
N = Annotated[int, typer.Option("--n", help="Generated images per item.")]
Strength = Annotated[float, typer.Option("--strength", help="img2img: how far from the source.")]
Coco = Annotated[Optional[str], typer.Option("--coco", help="COCO captions annotation file.")]
Images = Annotated[Optional[str], typer.Option("--images", help="Image root for --coco "
                                               "(folder or s3:// prefix).")]
Limit = Annotated[Optional[int], typer.Option("--limit", help="Only the first N items.")]
Ids = Annotated[Optional[str], typer.Option("--ids", help="COCO image ids, comma-separated.")]
Chunk = Annotated[Optional[int], typer.Option("--chunk", help="Items per chunk (task).")]
NoReuse = Annotated[bool, typer.Option("--no-reuse", help="Recompute OCR, captions and VQA "
                                       "even where an earlier run kept them for these images.")]
Where = Annotated[Optional[str], typer.Option("--where", help="Only records matching this "
                                              "filter, e.g. 'error==null and "
                                              "captions.blip~cat' (see README).")]
# datasets (issue 18): Parquet inputs
ImageColumn = Annotated[Optional[str], typer.Option(
    "--image-column", help="Parquet: the image column (URLs, paths, {bytes, path} structs or "
    "binary); default: found by type and name.")]
KeepColumns = Annotated[Optional[str], typer.Option(
    "--keep-columns", help="Parquet: comma-separated columns kept as each record's meta "
    "(default: caption,text,TEXT,alt,key,id).")]


def _keep(v: str | None) -> list[str] | None:
    return None if v is None else [c.strip() for c in v.split(",") if c.strip()]
Score = Annotated[bool, typer.Option("--score", help="Reference-free scores in every record: "
                                     "CLIPScore of captions, prompt and outputs, source/output "
                                     "similarity, OCR read-back.")]
CaptionForPrompt = Annotated[Optional[str], typer.Option(
    "--caption-for-prompt", help="Whose caption the prompt starts from: a captioner, or 'best' "
                                 "(the highest CLIPScore for that image).")]
InputRoot = Annotated[Optional[list[Path]], typer.Option(
    "--input-root", help="A folder manifest rows may name files in, besides the manifest's own "
                         "(repeat for more; adds to ITX_INPUT_ROOTS).")]

PENDING = 3  # exit code: --wait ended with items that have no record yet


def _input_roots(roots: list[Path] | None) -> None:
    if not roots:
        return
    from workers.settings import get_settings, reset_settings

    have = [str(r) for r in get_settings().input_roots]
    os.environ["ITX_INPUT_ROOTS"] = json.dumps(have + [str(r.expanduser()) for r in roots])
    reset_settings()


def _models(model: list[str] | None) -> dict[str, str]:
    out = {}
    for m in model or []:
        key, eq, ref = m.partition("=")
        if not eq or ":" not in key or not ref.strip():
            fail(f"--model {m!r}: write STAGE:BACKEND=REF, e.g. caption:blip=/models/blip-large")
        out[key.strip()] = ref.strip()
    return out


def make_spec(profile, captioners, ocr, vqa, edit, generator, steps, size, seed, n, strength,
              vqa_backend=None, model=None, score=False, caption_for_prompt=None,
              guidance=None, negative_prompt=None, caption_prompt=None):
    from pydantic import ValidationError

    from workers.settings import get_settings
    from workers.spec import PipelineSpec
    from workers.stages.edit import EditRuleError

    if profile:
        os.environ["ITX_PROFILE"] = profile
        from workers.settings import reset_settings
        reset_settings()
    caps = None
    if captioners is not None:
        caps = [] if captioners.strip().lower() in ("none", "") else \
            [c.strip() for c in captioners.split(",") if c.strip()]
    try:
        spec = PipelineSpec(profile=profile, captioners=caps, ocr=ocr, vqa=vqa or [],
                            vqa_backend=vqa_backend, models=_models(model),
                            edits=edit or [], generator=generator, steps=steps, size=size,
                            seed=seed, n=n, strength=strength, score=score,
                            caption_for_prompt=caption_for_prompt, guidance=guidance,
                            negative_prompt=negative_prompt, caption_prompt=caption_prompt)
        from workers.limits import check_cost

        s = get_settings()
        spec = spec.resolved(s.profile)
        check_cost(spec)  # operator caps: steps, pixels, outputs, rules and questions
        return spec
    except ValidationError as e:
        fail("; ".join((f"--{str(err['loc'][0]).replace('_', '-')}: " if err.get("loc") else "")
                       + err["msg"].removeprefix("Value error, ") for err in e.errors()))
    except (EditRuleError, ValueError) as e:
        fail(str(e))


def _ids(ids: str | None) -> list[int] | None:
    if not ids:
        return None
    try:
        return [int(x) for x in ids.split(",") if x.strip()]
    except ValueError:
        fail(f"--ids {ids!r}: write comma-separated integers")


def _note_profile(spec) -> None:
    if spec.profile == "tiny-random":
        real = f" (OCR is real: {spec.ocr})" if spec.ocr else ""
        console.print("[yellow]profile tiny-random:[/] models have tiny random weights; captions "
                      f"and generated images are not meaningful{real}. "
                      "Use --profile base with real weights (`itx models pull`).")


def _preflight(spec) -> None:
    from workers.models.errors import ModelMissingError
    from workers.models.loader import preflight

    try:
        preflight(spec)
    except ModelMissingError as e:
        fail(str(e))
    except ValueError as e:
        fail(str(e))


# --- itx run -----------------------------------------------------------------------------
@app.command()
def run(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Files, folders, globs, JSONL/CSV "
                                                          "manifests, s3:// prefixes, WebDataset "
                                                          "shards, Parquet.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (a file:// store).")]
    = Path("out"),
    profile: Profile = None, captioners: Captioners = None, ocr: Ocr = None, vqa: Vqa = None,
    edit: Edit = None, generator: Generator = None, steps: Steps = None, size: Size = None,
    seed: Seed = 0, n: N = 1, strength: Strength = 0.75, coco: Coco = None, images: Images = None,
    limit: Limit = None, ids: Ids = None, chunk: Chunk = None, vqa_backend: VqaBackend = None,
    model: Model = None, no_reuse: NoReuse = False, score: Score = False,
    caption_for_prompt: CaptionForPrompt = None,
    image_column: ImageColumn = None, keep_columns: KeepColumns = None,
    input_root: InputRoot = None,
    guidance: Guidance = None, negative_prompt: NegativePrompt = None,
    caption_prompt: CaptionPrompt = None,
):
    """Run the whole pipeline in this process (no broker, no server) and write OUT/manifest.jsonl."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    from orchestrator.embedded import run as run_embedded
    from orchestrator.inputs import is_dataset_ref, iter_inputs

    if not inputs and not coco:
        fail("give at least one input (file, folder, glob, manifest, s3:// prefix) or --coco")
    _input_roots(input_root)
    spec = make_spec(profile, captioners, ocr, vqa, edit, generator, steps, size, seed, n, strength,
                     vqa_backend, model, score, caption_for_prompt, guidance, negative_prompt,
                     caption_prompt)
    if no_reuse:
        spec = spec.model_copy(update={"reuse": False})
    _note_profile(spec)
    t0 = time.time()
    _preflight(spec)
    coco_ids = _ids(ids)
    total = sum(1 for _ in iter_inputs(inputs or [], coco=coco, images=images, limit=limit,
                                       ids=coco_ids)) if not any(
        str(i).startswith("s3://") or is_dataset_ref(i) for i in inputs or []) else None
    with Progress(TextColumn("[bold]itx run"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
                  disable=not sys.stderr.isatty() and os.environ.get("ITX_PROGRESS") != "1") as bar:
        task = bar.add_task("run", total=total, rate="")

        def advance(k):
            bar.advance(task, k)
            done = bar.tasks[0].completed
            bar.update(task, rate=f"{done / max(1e-9, time.time() - t0):.2f} items/s")

        try:
            records = run_embedded(inputs or [], spec, out, chunk=chunk, coco=coco, images=images,
                                   limit=limit, ids=coco_ids, on_chunk=advance,
                                   image_column=image_column, keep_columns=_keep(keep_columns))
        except Exception as e:
            from workers.models.errors import ModelMissingError

            if isinstance(e, ModelMissingError):
                fail(str(e))
            raise
    failed = [r for r in records if r.get("error")]
    for r in failed[:20]:
        console.print(f"[red]failed[/] {r['source']}: {r['error']}", highlight=False)
    if len(failed) > 20:
        console.print(f"… and {len(failed) - 20} more (see {out}/manifest.jsonl)")
    outputs = sum(len(r.get("outputs") or []) for r in records)
    out_console.print(f"{len(records)} items, {len(records) - len(failed)} ok, {len(failed)} failed, "
                      f"{outputs} images generated in {time.time() - t0:.1f} s -> "
                      f"{out}/manifest.jsonl", highlight=False)
    raise typer.Exit(1 if failed else 0)


# --- itx submit / status / results ---------------------------------------------------------
@app.command()
def submit(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Files, folders, globs, JSONL/CSV "
                                                          "manifests, s3:// prefixes, WebDataset "
                                                          "shards, Parquet.")] = None,
    batch: Annotated[Optional[str], typer.Option("--batch", "-b", help="Batch name.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the batch ends.")]
    = False,
    resume: Annotated[bool, typer.Option("--resume", help="Submit only the batch's items "
                                         "without a result record.")] = False,
    chunk: Chunk = None,
    profile: Profile = None, captioners: Captioners = None, ocr: Ocr = None, vqa: Vqa = None,
    edit: Edit = None, generator: Generator = None, steps: Steps = None, size: Size = None,
    seed: Seed = 0, n: N = 1, strength: Strength = 0.75, coco: Coco = None, images: Images = None,
    limit: Limit = None, ids: Ids = None, vqa_backend: VqaBackend = None, model: Model = None,
    no_reuse: NoReuse = False, score: Score = False, caption_for_prompt: CaptionForPrompt = None,
    image_column: ImageColumn = None, keep_columns: KeepColumns = None,
    input_root: InputRoot = None,
    guidance: Guidance = None, negative_prompt: NegativePrompt = None,
    caption_prompt: CaptionPrompt = None,
):
    """Submit a batch to the worker pools (needs a broker: ITX_BROKER_URL)."""
    from orchestrator.batch import BatchError
    from orchestrator.names import check_name
    from orchestrator.submit import submit as submit_batch

    if not inputs and not coco and not resume:
        fail("give at least one input, or --coco, or --batch NAME --resume")
    if resume and not batch:
        fail("--resume needs --batch NAME")
    if batch is not None:
        try:
            check_name(batch)  # before anything is read or written
        except ValueError as e:
            fail(str(e))
    _input_roots(input_root)
    spec = make_spec(profile, captioners, ocr, vqa, edit, generator, steps, size, seed, n, strength,
                     vqa_backend, model, score, caption_for_prompt, guidance, negative_prompt,
                     caption_prompt)
    from workers.models.trust import ModelNotAllowedError, check_spec

    try:  # the workers refuse them too; here it is one line before anything is sent
        check_spec(spec)
    except ModelNotAllowedError as e:
        fail(str(e))
    if no_reuse:
        spec = spec.model_copy(update={"reuse": False})
    t0 = time.time()
    try:
        b = submit_batch(inputs or [], spec, name=batch, chunk=chunk, resume=resume, coco=coco,
                         images=images, limit=limit, ids=_ids(ids), image_column=image_column,
                         keep_columns=_keep(keep_columns))
    except BatchError as e:
        fail(str(e))
    except Exception as e:  # broker down, store unreachable: one line, not a traceback
        from kombu.exceptions import OperationalError

        from workers.storage import StoreError

        if isinstance(e, (OperationalError, ConnectionError, StoreError)):
            fail(f"cannot reach the broker or store: {(str(e).splitlines() or [''])[0]}")
        raise
    out_console.print(f"batch [bold]{b.name}[/]: {b.submitted} items submitted, "
                      f"{b.already_done} already done ({time.time() - t0:.1f} s)")
    if not wait:
        raise typer.Exit(0)
    try:
        st = _wait(b)
    except BatchError as e:
        fail(str(e))
    _print_status(st)
    if st["pending"]:
        console.print(f"[yellow]{st['pending']} items have no record yet.[/] Continue with "
                      f"`itx submit --batch {b.name} --resume --wait` (it submits exactly those), "
                      f"or look with `itx status {b.name}`.", highlight=False, soft_wrap=True)
        raise typer.Exit(PENDING)
    raise typer.Exit(1 if st["failed"] else 0)


def _wait(b) -> dict:
    """``Batch.wait`` with a progress bar: items done of total, failures, rate, ETA."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    t0 = time.monotonic()
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}"), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*cols, console=console, transient=False) as bar:
        task = bar.add_task(b.name, total=None, failed=0, rate="")

        def show(p):
            el = time.monotonic() - t0
            rate = f"{(p.finished - p.already_done) / el:.1f} items/s" if el > 0 else ""
            bar.update(task, completed=p.finished, total=p.total, failed=p.failed, rate=rate)

        return b.wait(on_progress=show)


def _print_status(st: dict) -> None:
    t = Table(title=f"batch {st['batch']}", show_header=False)
    if st.get("state"):
        t.add_row("state", st["state"])
    for k in ("total", "done", "failed", "pending"):
        t.add_row(k, str(st[k]))
    if st.get("cancelled"):
        t.add_row("cancelled", str(st["cancelled"]))
    if st.get("items_per_s"):
        t.add_row("items/s", f"{st['items_per_s']:.2f}")
    for reason, count in st["failures"].items():
        t.add_row(f"  failed: {reason}", str(count))
    out_console.print(t)


@app.command()
def status(batch: str, as_json: Annotated[bool, typer.Option("--json")] = False):
    """Progress, state (running, done, cancelled, incomplete), failures by reason and
    throughput, read from the store."""
    from orchestrator.batch import BatchError
    from orchestrator.ops import status as batch_status

    try:
        st = batch_status(batch)
    except BatchError as e:
        fail(str(e))
    if as_json:
        out_console.print_json(json.dumps(st))
    else:
        _print_status(st)


@app.command()
def results(batch: Annotated[str, typer.Argument(help="A batch name (or a manifest.jsonl).")],
            out: Annotated[Path, typer.Option("--out", "-o")] = Path("manifest.jsonl"),
            where: Where = None):
    """Write the batch's result records (one JSON per line) to OUT."""
    from orchestrator.export import ExportError, write_results
    from orchestrator.where import WhereError

    try:
        n = write_results(batch, out, where=where)
    except (ExportError, WhereError) as e:
        fail(str(e))
    out_console.print(f"{n} records -> {out}")


# --- itx batches / cancel / retry / export / gc ------------------------------------------
@app.command()
def batches(as_json: Annotated[bool, typer.Option("--json")] = False):
    """The batches in the store, newest first: items, done, failed, state."""
    from datetime import datetime

    from orchestrator.ops import batches as list_batches

    rows = list_batches()
    if as_json:
        out_console.print_json(json.dumps(rows))
        return
    t = Table("batch", "created", "items", "done", "failed", "state")
    for r in rows:
        created = datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M:%S") \
            if r["created"] else ""
        t.add_row(r["name"], created, str(r["items"]), str(r["done"]), str(r["failed"]),
                  r["state"])
    out_console.print(t)


@app.command()
def cancel(batch: str):
    """Cancel a batch: no new chunk starts, running chunks stop at their next mini-batch;
    `itx submit --batch B --resume` continues it."""
    from orchestrator.batch import BatchError
    from orchestrator.ops import cancel as cancel_batch

    try:
        cancel_batch(batch)
    except BatchError as e:
        fail(str(e))
    out_console.print(f"batch [bold]{batch}[/]: cancelled (resume with `itx submit --batch "
                      f"{batch} --resume`)")


@app.command()
def retry(batch: str,
          kind: Annotated[Optional[str], typer.Option(
              "--kind", help="Error kinds to retry, comma-separated (default: timeout,"
                             "store_unavailable,worker_lost,oom).")] = None,
          wait: Annotated[bool, typer.Option("--wait", help="Show progress until done.")] = False,
          chunk: Chunk = None):
    """Resubmit only the items whose records are errors of these kinds (same ids; their
    records are replaced and `attempts` grows)."""
    from orchestrator.batch import BatchError
    from orchestrator.ops import TRANSIENT
    from orchestrator.ops import retry as retry_batch

    kinds = [k.strip() for k in kind.split(",") if k.strip()] if kind else list(TRANSIENT)
    try:
        b = retry_batch(batch, kinds, chunk=chunk)
    except BatchError as e:
        fail(str(e))
    out_console.print(f"batch [bold]{b.name}[/]: {b.submitted} items resubmitted "
                      f"({', '.join(kinds)})")
    if not wait or not b.submitted:
        raise typer.Exit(0)
    st = _wait(b)
    _print_status(st)
    raise typer.Exit(1 if st["failed"] else 0)


@app.command()
def export(
    source: Annotated[str, typer.Argument(help="A batch name or a manifest.jsonl.")],
    format: Annotated[str, typer.Option("--format", "-f", help="webdataset | parquet | jsonl.")]
    = "webdataset",
    out: Annotated[str, typer.Option("--out", "-o", help="Folder or s3://bucket/prefix.")]
    = "export",
    shard_size: Annotated[int, typer.Option("--shard-size", help="Records per shard.")]
    = 10_000,
    where: Where = None,
):
    """Training data: WebDataset tar shards, Parquet or JSON Lines of the records."""
    from orchestrator.export import ExportError, export as run_export
    from orchestrator.where import WhereError

    try:
        res = run_export(source, format, out, shard_size=shard_size, where=where)
    except (ExportError, WhereError) as e:
        fail(str(e))
    out_console.print(f"{res['records']} records in {res['shards']} {format} shards -> {out}")


@app.command()
def gc(batch: str,
       force: Annotated[bool, typer.Option("--force", help="Even with items left.")] = False):
    """Remove a finished batch's transient objects (parts/, chunk ledgers); records, images
    and a compact item list stay."""
    from orchestrator.batch import BatchError
    from orchestrator.ops import gc as gc_batch

    try:
        r = gc_batch(batch, force=force)
    except BatchError as e:
        fail(str(e))
    out_console.print(f"batch [bold]{batch}[/]: freed {r['objects']} objects "
                      f"({r['ledgers']} ledgers, {r['parts']} parts), {r['bytes']} bytes")


# --- itx models ------------------------------------------------------------------------------
@models_app.command("tiny")
def models_tiny(force: Annotated[bool, typer.Option("--force")] = False,
                to: Annotated[Optional[Path], typer.Option("--to")] = None):
    """Build the tiny-random checkpoints (deterministic, a few MB) into ITX_MODEL_DIR."""
    from workers.models import tiny
    from workers.settings import get_settings

    root = to or get_settings().model_dir
    for name in tiny.names():
        t = time.time()
        path = tiny.build(name, root, force=force)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        out_console.print(f"{name:10s} {size / 1e6:6.2f} MB  {time.time() - t:5.1f} s  {path}")


@models_app.command("list")
def models_list(profile: Profile = None):
    """The models each profile uses and whether they are on this machine."""
    from workers.models.profiles import PROFILES, models
    from workers.settings import get_settings

    md = get_settings().model_dir
    routes = stage_table.routes()
    t = Table("profile", "stage:backend", "pool", "ref", "local")
    for p in PROFILES:
        if profile and p != profile:
            continue
        for key, ref in models(p).items():
            if ref == "builtin":
                here = "builtin"
            elif ref.startswith("tiny-random/"):
                here = "yes" if (md / ref / ".itx-complete").exists() else "built on first use"
            else:
                here = "yes" if (md / ref).exists() else "no"
            t.add_row(p, key, routes[key], ref, here)
    out_console.print(t)


@models_app.command("table")
def models_table():
    """Every backend of the stage table as a Markdown table (the README's)."""
    print(stage_table.markdown())


@models_app.command("pull")
def models_pull(
    profile: Profile = None,
    pool: Annotated[Optional[str], typer.Option("--pool", help="Only one pool's models: "
                                                "light or heavy.")] = None,
    to: Annotated[Optional[Path], typer.Option("--to", help="Destination (default: "
                                               "ITX_MODEL_DIR).")] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="Pull a pushed model set from "
                                                 "a store (s3://… or file://…), checksums "
                                                 "verified, instead of the hub.")] = None,
):
    """Download a profile's weights (hub -> local directory, EasyOCR included), or a model set
    from your own store with --from (default: ITX_MODELS_URI when set)."""
    from workers.models.distribute import DistributionError, pull_models_from, pull_models_from_hub
    from workers.settings import get_settings

    s = get_settings()
    dest = to or s.model_dir
    src = from_ or (s.models_uri if not profile or pool else None) or None
    try:
        if src:
            prof = (profile or s.profile) if pool else profile
            t = pull_models_from(src, dest, profile=prof, pool=pool)
            out_console.print(f"pulled {src} -> {dest}: {t}")
        else:
            res = pull_models_from_hub(profile or s.profile, dest, pool=pool)
            for ref, why in res.skipped.items():
                console.print(f"[yellow]skipped[/] {ref}: {why}", highlight=False)
            out_console.print(f"{len(res.pulled)} models in {dest}")
    except (DistributionError, ValueError) as e:
        fail(str(e), 1)


@models_app.command("push")
def models_push(src: Annotated[Path, typer.Argument(help="Local model directory.")],
                uri: Annotated[str, typer.Argument(help="Destination: s3://bucket/prefix.")]):
    """Upload a model directory to your store with a checksum manifest, for `pull --from`."""
    from workers.models.distribute import DistributionError, push_models

    try:
        t = push_models(src, uri)
    except (DistributionError, ValueError) as e:
        fail(str(e), 1)
    out_console.print(f"pushed {src} -> {uri}: {t}")


# --- itx eval / report -----------------------------------------------------------------------
def _records_of(source: str) -> tuple[list[dict], Optional[str]]:
    """A manifest path, or a batch name in the configured store."""
    from orchestrator.batch import Batch, BatchError
    from orchestrator.evaluate import load_manifest

    p = Path(source)
    if p.is_file() or source.startswith("file://"):
        return load_manifest(source), None
    try:
        b = Batch(source)
        b.meta()
    except BatchError as e:
        fail(f"{source!r} is neither a manifest file nor a batch: {e}")
    return list(b.results()), b.store.uri


@app.command("eval")
def eval_cmd(
    manifest: Annotated[str, typer.Argument(help="manifest.jsonl (or a batch name).")],
    coco: Annotated[Optional[Path], typer.Option("--coco", help="COCO captions annotations.")]
    = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics as JSON.")]
    = None,
    vqa_annotations: Annotated[Optional[Path], typer.Option(
        "--vqa-annotations", help="VQA-format annotations: score the answers too.")] = None,
    vqa_questions: Annotated[Optional[Path], typer.Option(
        "--vqa-questions", help="VQA-format questions file (with --vqa-annotations).")] = None,
):
    """Reference-free score statistics (records from --score: mean, median, p10, p90, per
    captioner); with --coco caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE,
    RefCLIPScore) against COCO references; VQA accuracy."""
    from orchestrator.evaluate import caption_metrics, format_table, vqa_accuracy
    from orchestrator.scores import format_summary, ref_clip_scores, summary

    records, _ = _records_of(manifest)
    scored = summary(records)
    if not coco and not vqa_annotations and not scored["items"]:
        fail("the records have no scores (run with --score); or give --coco ANNOTATIONS "
             "and/or --vqa-annotations FILE")
    result: dict = {}
    try:
        if coco:
            result = caption_metrics(records, coco)
            if scored["items"]:
                for c, v in ref_clip_scores(records, coco).items():
                    if c == "skipped":
                        result["skipped"].update(v)
                    else:
                        result.setdefault(c, {})["RefCLIPScore"] = v["RefCLIPScore"]
            out_console.print(format_table(result))
        if scored["items"]:
            result["scores"] = scored
            out_console.print(format_summary(scored))
        if vqa_annotations:
            acc = vqa_accuracy(records, vqa_annotations, vqa_questions)
            result["vqa"] = acc
            out_console.print(f"VQA accuracy: {acc['accuracy'] * 100:.2f} % over "
                              f"{acc['questions']} questions")
    except (ValueError, FileNotFoundError, KeyError) as e:
        fail(str(e))
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))
        out_console.print(f"-> {json_out}")


@app.command()
def report(
    source: Annotated[str, typer.Argument(help="A batch name or a manifest.jsonl.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("report"),
    page_size: Annotated[int, typer.Option("--page-size", help="Cards per page.")] = 100,
    max_sheet: Annotated[int, typer.Option("--sheet-items", help="Items on the contact sheet.")]
    = 64,
    sort: Annotated[Optional[str], typer.Option("--sort", help="A score key (e.g. "
                    "clip-i:output:0): the contact sheet's order and the gallery's first one, "
                    "highest first.")] = None,
    ascending: Annotated[bool, typer.Option("--ascending", help="With --sort: lowest first.")]
    = False,
):
    """An HTML gallery (one card per item, paginated; sort and filter by any score), a
    contact-sheet PNG and, for scored records, a PNG of the score distributions."""
    from orchestrator.report import contact_sheet, default_resolver, score_plot, write_report
    from orchestrator.scores import score_keys
    from workers.storage import open_store

    records, store_uri = _records_of(source)
    if not records:
        fail(f"{source}: no records")
    out.mkdir(parents=True, exist_ok=True)
    resolver = default_resolver(out)
    if any(str(r.get("image") or "").startswith("s3://") for r in records):
        local = resolver

        def resolver(uri):  # noqa: F811 - presigned URLs for s3://, relative paths otherwise
            if uri and uri.startswith("s3://"):
                b = uri[5:].split("/", 1)[0]
                return open_store(f"s3://{b}").presign(uri)
            return local(uri)
    keys = score_keys(records)
    if sort and sort not in keys:
        fail(f"--sort {sort!r}: no record has that score; the records have "
             f"{', '.join(keys) or 'no scores (run with --score)'}")
    sheet, grid = contact_sheet(records, out / "contact-sheet.png", max_items=max_sheet,
                                sort_by=sort, ascending=ascending)
    plot = score_plot(records, out / "scores.png")
    if plot is None and (out / "scores.png").exists():  # from an earlier, scored report
        (out / "scores.png").unlink()
    index = write_report(records, out, resolve_image=resolver, page_size=page_size,
                         contact_sheet="contact-sheet.png", plot=plot and plot.name,
                         sort_by=sort, ascending=ascending)
    out_console.print(f"{len(records)} items -> {index} (contact sheet {grid[0]}x{grid[1]}: {sheet}"
                      + (f", score distributions: {plot})" if plot else ")"))


def _infrastructure(e: BaseException) -> str | None:
    """One line for an error of the services around itx (store, broker), else None."""
    from workers.storage import StoreError

    if isinstance(e, StoreError):
        from workers.settings import get_settings

        msg = (str(e).splitlines() or [type(e).__name__])[0]
        return f"the store {get_settings().store} failed: {msg}"
    try:
        from kombu.exceptions import OperationalError
        from redis.exceptions import ConnectionError as RedisConnectionError
    except ImportError:  # pragma: no cover
        return None
    if isinstance(e, (OperationalError, RedisConnectionError, ConnectionError)):
        return (f"lost the broker or result backend: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                f"is it running? (ITX_BROKER_URL, ITX_RESULT_BACKEND)")
    return None


def main():
    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as e:
        line = _infrastructure(e)
        if line is None:
            raise
        console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
