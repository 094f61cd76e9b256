"""Reading ahead: while a chunk's model runs, the chunk this process will most likely run next
is read — its ledger, its images (decoded, into the image cache) and its stage-reuse lookups
— so the next task finds them in memory instead of waiting on the store.

Which chunk comes next: chunks are numbered in submission order and the queue hands them out
in order, so a process that ran chunk ``n`` of a batch will likely run ``n + stride``, where
``stride`` is the gap between the last two chunks it ran of that submission (1 for a process
alone on its queue; about the number of processes where several share it). A wrong guess
costs reads only: the guessed chunk's images are read once more by the process that runs it.
At most one chunk is read ahead per process; the images count against the image cache
(``ITX_IMAGE_CACHE_BYTES``). ``ITX_PREFETCH=false`` turns it off.
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor

from workers.pipeline import reuse
from workers.pipeline.read import Lru, load_chunk, read_images
from workers.pipeline.run import header_stages, reuse_keys
from workers.records import Chunk
from workers.settings import get_settings
from workers.storage import open_store

log = logging.getLogger(__name__)

_JOBS = Lru(8)  # (store, ledger key, nonce) -> the Future of its read-ahead
_LAST = Lru(64)  # (store, batch, nonce) -> (the last chunk this process ran, the stride)
_AHEAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="itx-ahead")
_NUMBER = re.compile(r"(\d+)(\.json)$")


def _key(chunk: Chunk, ref: str) -> tuple:
    return (open_store().uri, ref, chunk.nonce)


def ahead(chunk: Chunk) -> None:
    """``chunk`` has its images: start reading the chunk this process likely runs next."""
    if not chunk.ref or not _NUMBER.search(chunk.ref) or not get_settings().prefetch:
        return
    seen = (open_store().uri, chunk.batch, chunk.nonce)
    last, stride = _LAST.get(seen, (None, 1))
    if last == chunk.chunk:
        return  # another stage of the same chunk: its read-ahead has started
    if last is not None and chunk.chunk > last:
        stride = chunk.chunk - last
    _LAST.put(seen, (chunk.chunk, stride))
    n = chunk.chunk + stride
    ref = _NUMBER.sub(lambda m: f"{n:0{len(m.group(1))}d}{m.group(2)}", chunk.ref)
    if _JOBS.get(_key(chunk, ref)) is None:
        _JOBS.put(_key(chunk, ref), _AHEAD.submit(_read, ref, chunk.nonce))


def wait(chunk: Chunk, timeout: float = 120) -> None:
    """Let a read-ahead of ``chunk`` finish before the task reads the same objects itself."""
    if not chunk.ref:
        return
    job = _JOBS.get(_key(chunk, chunk.ref))
    if job is not None:
        try:
            job.result(timeout)
        except Exception:  # a read-ahead is best effort: the task reads for itself
            pass


def _read(ref: str, nonce: str | None) -> None:
    try:
        chunk = load_chunk({"ref": ref, "nonce": nonce})
    except Exception as e:  # not written yet, or the batch's last chunk has passed
        log.debug("no read-ahead of %s: %s", ref, e)
        return
    need = [it for it in chunk.items if not it.error]
    if chunk.spec.reuse:
        stages = header_stages(chunk.spec, chunk.items)
        keys = [reuse_keys(chunk, stage, name) for stage, name in stages]
        found = reuse.read({c for k in keys for c, _ in k.values()}, chunk.nonce,
                           reuse.new_contents(chunk.items))
        need = [it for it in need  # an image every stage takes from reuse is not read
                if not all(it.id in k and k[it.id][1] in found[k[it.id][0]] for k in keys)]
    read_images(need)
