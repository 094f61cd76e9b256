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

from workers import tasks
from workers.pipeline.run import header_stages
from workers.records import Chunk
from workers.stages import table


def chunk_canvas(chunk: Chunk | dict):
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
    canvas = chord(header, compose) if header else compose
    if spec.generator:
        canvas = canvas | sig(tasks.generate, queue=gen_queue)
    return canvas
