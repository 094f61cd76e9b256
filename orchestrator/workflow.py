"""The Celery canvas for one chunk:

    chord(group(stage(chunk, s, b) for each header stage s:b), compose(chunk)) | generate

Each header stage runs on the queue the stage table gives its backend (``ITX_ROUTES``
overrides it); compose runs where the generator runs when one follows (a few ms of text work
that would otherwise wait behind the header tasks of every later chunk), else where the score
backend runs when scores are asked (compose scores the captions), else on the light queue;
generate runs on the generator's queue.

A chunk that ``itx submit`` wrote to the store travels by reference: every task gets
``{"ref", "nonce"}`` and reads the chunk from its ledger, and the stages hand their outputs on
the same way (``workers.pipeline.read.hand_on``), so a few hundred bytes cross the broker per
chunk. A chunk without a ledger travels whole.
"""
from __future__ import annotations

from celery import chord
from celery.utils import uuid

from workers import tasks
from workers.pipeline.run import header_stages
from workers.records import Chunk
from workers.stages import table


def _parts(chunk: Chunk | dict):
    """The chunk's header signatures (one per header stage), compose's and generate's (or
    None): what the canvas is made of."""
    chunk = chunk if isinstance(chunk, Chunk) else Chunk.model_validate(chunk)
    spec = chunk.spec
    msg = chunk.pointer().model_dump(exclude_none=True) if chunk.ref else chunk.dump()
    # the argument shown in Flower, logs and task events: short, and the same for every task
    label = f"{chunk.batch}/{chunk.chunk:06d}"

    def sig(task, *args, queue=None):
        s = task.s(*args)
        if queue:
            s = s.set(queue=queue)
        return s.set(argsrepr=repr((label, *args[1:]))) if chunk.ref else s

    header = [sig(tasks.stage, msg, stage, name, queue=table.queue_of(stage, name))
              for stage, name in header_stages(spec, chunk.items)]
    gen_queue = table.queue_of("generate", spec.generator) if spec.generator else \
        table.queue_of("score", spec.scorer) if spec.scorer else None  # CLIP scores in compose
    compose = sig(tasks.compose, msg, queue=gen_queue) if header else \
        tasks.compose.si([], msg).set(**({"queue": gen_queue} if gen_queue else {}))
    generate = sig(tasks.generate, queue=gen_queue) if spec.generator else None
    return header, compose, generate


def chunk_canvas(chunk: Chunk | dict):
    header, compose, generate = _parts(chunk)
    canvas = chord(header, compose) if header else compose
    if generate is not None:
        canvas = canvas | generate
    return canvas


def send_chunk(chunk: Chunk | dict):
    """``chunk_canvas(chunk).apply_async()``, without the canvas's copies: the same messages
    (``tests/test_submit_canvas.py`` compares them, ids aside), the same chord set-up in the
    result backend, and a result that is the canvas's last task (its ``parent`` the header's
    group). For a chord of plain tasks with a compose [| generate] body, Celery's
    ``chord.apply_async`` clones the header group and the body, freezes the header twice and
    clones each header task twice more, each clone a deep copy of options that hold the body:
    most of the CPU that enqueueing a chunk took. Here the signatures are built once and each
    is frozen once, with what ``chord.run`` freezes them with, and each header task is sent
    with the options ``group._apply_tasks`` sends it with."""
    header, compose, generate = _parts(chunk)
    if not header:  # no chord: nothing to save
        return chunk_canvas(chunk).apply_async()
    app = tasks.stage.app
    if app.conf.task_always_eager:
        return chunk_canvas(chunk).apply_async()
    body = compose | generate if generate is not None else compose
    group_id = uuid()
    # chord.run: the body first (its last task's result is the canvas's), then the header
    # tasks with the body as their chord, in order (group_index), root and parent unset
    bodyres = body.freeze(uuid(), group_id=group_id, root_id=None)
    results = [s.freeze(group_id=group_id, chord=body, root_id=None, parent_id=None,
                        group_index=i) for i, s in enumerate(header)]
    app.backend.apply_chord((group_id, results), body, interval=None, countdown=1,
                            max_retries=None)
    # group._apply_tasks: the chord's size before its last task is sent, every task with the
    # one producer, not added to a parent
    app.backend.set_chord_size(group_id, len(header))
    with app.producer_or_acquire() as producer:
        for s in header:
            s.apply_async(producer=producer, add_to_parent=False, chord=body,
                          group_id=group_id)
    bodyres.parent = app.GroupResult(group_id, results)  # as chord.run leaves it
    return bodyres
