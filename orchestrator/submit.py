"""Submission: inputs are staged into the store as they are read, and each chunk is written
to its ledger and enqueued as soon as it forms.

Layout in the store::

    inputs/<sha256>.<ext>                 content-addressed input images
    runs/<batch>/batch.json               spec, inputs, chunk size, created
    runs/<batch>/chunks/<n>.json          chunk n: spec and items (the ledger)
    runs/<batch>/parts/<n>/<stage>.json   stage outputs handed on between tasks
    runs/<batch>/results/<id>.json        one result record per item: "done" is a file
    runs/<batch>/images/<id>-<k>.png      generated images

Item ids are deterministic (content + spec), so a resubmission skips what is done.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from orchestrator import confine
from orchestrator.batch import Batch, BatchError
from orchestrator.inputs.http import InputError, fetch_http, redact_text, redact_url
from orchestrator.inputs import InputItem, iter_inputs
from orchestrator.names import check_name
from workers.limits import LimitError, cap, check_cost, check_program
from workers.records import Chunk, Item
from workers.settings import get_settings
from workers.spec import PipelineSpec
from workers.storage import (FileStore, OutsideStoreError, S3Store, StoreError, TooLargeError,
                             open_store)


def _sha(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def item_id(content: str, spec_fp: str, item: InputItem) -> str:
    """Deterministic: the same content and stage spec always give the same id."""
    return _sha(content, spec_fp, item.questions, item.edit)


def known_id(item: InputItem, spec_fp: str) -> str | None:
    """A shard sample's or table row's id, known before reading it: it comes from (shard or
    file, key or row), so resume skips done items without any I/O."""
    return item_id(item.ident, spec_fp, item) if item.ident and not item.error else None


# --- staging: inputs -> items in the store -------------------------------------------------
def stage_item(item: InputItem, store, spec_fp: str, done: set | None = None) -> Item:
    """Put one input into the store (skipping objects already there); return the chunk item.
    An item whose id is known up front and in ``done`` is not staged at all."""
    s = get_settings()
    extra = {k: v for k, v in (("questions", item.questions), ("edit", item.edit),
                                ("coco_id", item.coco_id), ("file_name", item.file_name),
                                ("meta", item.meta)) if v}
    source = cap(redact_url(item.source))  # what records echo back: no signed query, bounded
    if done and (kid := known_id(item, spec_fp)) in done:  # a dataset sample already done
        return Item(id=kid, source=source, **extra)
    try:
        if item.error:
            kind, sep, msg = item.error.partition(": ")
            raise InputError(kind, msg) if sep else InputError("bad_input", item.error)
        try:
            check_program(item.edit or [], item.questions or [])
        except LimitError as e:
            raise InputError(e.kind, str(e).split(": ", 1)[1]) from None
        if item.data is not None:  # bytes read from a shard or a table cell
            if len(item.data) > s.max_image_bytes:
                raise InputError("file_too_large",
                                 f"{len(item.data)} bytes is over the limit of {s.max_image_bytes}")
            uri, new = store.put_content(item.data, item.ext or ".bin")
            content = uri.rsplit("/", 1)[-1]
        elif item.path is not None:
            p = item.path
            confine.check_path(p, item.manifest_dir)
            if not p.exists():
                raise InputError("not_found", f"no such file {str(p)!r}")
            if not p.is_file():
                raise InputError("not_a_file", f"{str(p)!r} is not a regular file")
            size = p.stat().st_size
            if size > s.max_image_bytes:
                raise InputError("file_too_large", f"{size} bytes is over the limit of {s.max_image_bytes}")
            try:
                data = p.read_bytes()
            except OSError as e:
                raise InputError("unreadable", f"cannot read {str(p)!r}: {e.strerror}") from None
            uri, new = store.put_content(data, p.suffix or ".bin")
            content = uri.rsplit("/", 1)[-1]
        else:
            scheme = "s3" if item.uri.startswith("s3://") else urlparse(item.uri).scheme
            if scheme == "s3":
                try:
                    store.key_of(item.uri)
                    uri = item.uri  # already in the store: use it where it is
                    content, new = uri, False
                except OutsideStoreError:
                    confine.check_bucket(item.uri, getattr(store, "bucket", None))
                    u = urlparse(item.uri)
                    try:
                        data = S3Store(f"s3://{u.netloc}").get(u.path.lstrip("/"),
                                                               max_bytes=s.max_image_bytes)
                    except TooLargeError as e:
                        raise InputError("file_too_large", str(e)) from None
                    uri, new = store.put_content(data, Path(u.path).suffix or ".bin")
                    content = uri.rsplit("/", 1)[-1]
            elif scheme in ("http", "https"):
                data = fetch_http(item.uri)
                uri, new = store.put_content(data, Path(urlparse(item.uri).path).suffix or ".bin")
                content = uri.rsplit("/", 1)[-1]
            else:
                raise InputError("unknown_scheme", f"cannot read {item.uri!r}")
    except InputError as e:
        error = str(e)
    except StoreError as e:
        error = f"store_error: {e}"
    except OSError as e:
        error = f"unreadable: {e}"
    else:
        return Item(id=known_id(item, spec_fp) or item_id(content, spec_fp, item),
                    source=source, image=uri, new=new or None, **extra)
    if "edit" in extra and len(extra["edit"]) > s.max_edit_rules:  # not echoed back in full
        extra["edit"] = extra["edit"][:s.max_edit_rules]
    if "questions" in extra and len(extra["questions"]) > s.max_questions:
        extra["questions"] = extra["questions"][:s.max_questions]
    for k in ("edit", "questions"):
        if k in extra:
            extra[k] = [cap(x, 200) for x in extra[k]]
    # one record per bad row, also for rows naming the same source with other edits/questions
    return Item(id=_sha("error", item.source, spec_fp, item.questions, item.edit), source=source,
                error=cap(redact_text(error, item.source)), **extra)


_HANDOFF = 64  # items the stager takes from the input thread at a time, at most


def _no_io(item: InputItem, store, done=None, spec_fp="") -> bool:
    """Staging ``item`` reads and writes nothing: an error, a dataset sample already done, or
    an s3:// object in the store."""
    if item.error or (done and known_id(item, spec_fp) in done):
        return True
    if item.data is not None:
        return False
    if item.path is not None or not (item.uri or "").startswith("s3://"):
        return False
    try:
        store.key_of(item.uri)
        return True
    except StoreError:
        return False


class _Done:
    """An item staged in the calling thread, in the shape of a finished future."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def done(self) -> bool:
        return True

    def result(self):
        return self.value


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


def stage_items(items: Iterable[InputItem], store, spec_fp: str, threads: int = 16,
                window: int = 256, tick: float = 0.5,
                done: set | None = None) -> Iterator[Item | None]:
    """Upload in parallel and yield chunk items in input order as soon as each is ready.

    At most ``window`` items are in flight, so memory stays flat. Inputs are read in a thread,
    so a slow source (a pipe, a listing) never holds back items already staged: while waiting
    it yields ``None`` every ``tick`` seconds, letting the caller flush a partial chunk.
    ``threads`` stage items that wait on the network (an S3 store, URLs); local files and
    bytes going into a file:// store take one thread per CPU instead, since more only contend
    for the interpreter (2 threads staged 20-45 % more items/s than 16 on 2 cores).
    """
    local = isinstance(store, FileStore)
    q: queue.Queue = queue.Queue(maxsize=window)

    def produce():
        try:
            for it in items:
                q.put(it)
        except BaseException as e:  # surfaced in the caller's thread
            q.put(_Raised(e))
        finally:
            q.put(_END)

    threading.Thread(target=produce, name="itx-inputs", daemon=True).start()
    inflight: deque = deque()
    ended = False
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="itx-stage") as pool, \
            ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                               thread_name_prefix="itx-stage-local") as near:
        while not ended or inflight:
            while inflight and inflight[0].done():
                yield inflight.popleft().result()
            if ended or len(inflight) >= window:
                if inflight:
                    yield inflight.popleft().result()
                continue
            try:
                got = [q.get(timeout=0.02 if inflight else tick)]
            except queue.Empty:
                if not inflight:
                    yield None  # idle: the source is slow
                continue
            while len(got) < _HANDOFF:  # whatever else is ready, without waiting
                try:
                    got.append(q.get_nowait())
                except queue.Empty:
                    break
            for it in got:
                if it is _END:
                    ended = True
                elif isinstance(it, _Raised):
                    raise it.exc
                elif _no_io(it, store, done, spec_fp):  # in the store: staged here, no upload
                    inflight.append(_Done(stage_item(it, store, spec_fp, done)))
                else:
                    on_disk = local and (it.path is not None or it.data is not None)
                    inflight.append((near if on_disk else pool).submit(
                        stage_item, it, store, spec_fp, done))


def new_batch_name() -> str:
    return datetime.now(timezone.utc).strftime("b%Y%m%d-%H%M%S")


def _drop_subscriptions(backend) -> None:
    """Celery's Redis result backend subscribes (pub/sub) to every chord header result it
    sends and keeps each result object until its task is ready. We poll states instead, so
    drop them as we go: a million-item batch must not hold 100,000 subscriptions."""
    pending = getattr(backend, "_pending_results", None)
    if not pending:
        return
    for mapping in pending:
        for task_id in list(mapping):
            for r in list((mapping.get(task_id) or {}).values()):
                try:  # the class's method, also inside _no_result_subscriptions
                    type(backend).remove_pending_result(backend, r)
                except Exception:
                    pass


def check_services(app) -> None:
    """Fail fast, in one line and without credentials, when the broker or the result backend
    cannot be reached (down, wrong password, a TLS certificate that does not verify)."""
    if app.conf.task_always_eager:
        return
    with app.connection_for_write() as conn:
        try:
            conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5,
                                   timeout=10)
        except Exception as e:
            raise BatchError(f"cannot reach the broker {conn.as_uri()}: {e}") from None
    client = getattr(app.backend, "client", None)  # redis result backends
    if client is not None:
        try:
            client.ping()
        except Exception as e:
            raise BatchError(f"cannot reach the result backend: {e}") from None


@contextmanager
def _no_result_subscriptions(backend):
    """Celery's Redis result backend subscribes (pub/sub) to the result of every task it
    sends, so that a ``.get()`` can wake on it, and ``_drop_subscriptions`` unsubscribes
    again: two commands per task. Submission never waits that way (``poll`` reads states),
    so while enqueueing it does not subscribe at all. ``.ready()``/``.state`` are plain reads
    and unaffected; ``.get()`` on a result sent inside this block would wait for nothing.

    Nor does it register the results as pending (``add_pending_result``, which a group
    calls for each header task to fulfil its barrier): without a subscription nothing
    would ever resolve them, and ``_drop_subscriptions`` removed them again right after;
    ``remove_pending_result`` (every result object calls it when it is collected) has
    nothing to do in the block either."""
    consumer = getattr(backend, "result_consumer", None)
    if consumer is None or not callable(getattr(consumer, "consume_from", None)) \
            or not callable(getattr(backend, "add_pending_result", None)):
        yield
        return
    consumer.consume_from = lambda *args, **kwargs: None
    backend.add_pending_result = lambda result, *args, **kwargs: result
    # and each result object dropped in the block (AsyncResult.__del__) has nothing to remove
    backend.remove_pending_result = lambda result: result
    try:
        yield
    finally:
        del consumer.consume_from  # the class's methods again
        del backend.add_pending_result, backend.remove_pending_result


@contextmanager
def _batched_publishes(app):
    """Publish everything this thread sends inside the block in one Redis pipeline when it
    ends (kombu's ``Producer.batch``, kombu >= 5.7), not one LPUSH round trip per task.

    A canvas acquires its producer through ``app.producer_or_acquire()`` and gives no way to
    pass one in (``chord.apply_async(producer=…)`` does not reach the header group), so for
    the block this thread's calls get one batching producer; other threads get the pool's as
    before. Without ``Producer.batch`` (older kombu, other transports) nothing changes. A
    failed flush raises: delivery of that batch is uncertain (the caller re-sends)."""
    me = threading.get_ident()
    acquire = app.producer_or_acquire
    with acquire() as producer:
        batch = getattr(producer, "batch", None)
        if batch is None:
            yield
            return

        def producer_or_acquire(p=None):
            if p is None and threading.get_ident() == me:
                return nullcontext(producer)
            return acquire(p)

        app.producer_or_acquire = producer_or_acquire
        producer.maybe_declare = _cached_declare(producer)
        try:
            # no flush before the block ends (kombu flushes every 1,000 operations by
            # default): the caller sets the chords up before any of their tasks is sent
            with batch(max_size=1 << 30):
                yield
        finally:
            del app.producer_or_acquire  # the class's method again
            del producer.maybe_declare


def _cached_declare(producer):
    """``producer.maybe_declare`` that looks in kombu's cache of declared entities before
    anything else. Celery passes the task's queue in ``declare=`` with every message, and
    kombu binds a copy of the queue to the channel (and, with retries, wraps the call in
    ``Connection.ensure``) before it finds the queue declared already: once per message,
    for the same few queues. The answer is the same; the first message to a queue declares
    it as before."""
    declare = producer.maybe_declare

    def maybe_declare(entity, retry=False, **retry_policy):
        conn = getattr(producer.channel, "connection", None)
        if entity and conn is not None and entity.can_cache_declaration \
                and hash(entity) in conn.client.declared_entities:
            return False  # what kombu's _maybe_declare returns for a cached declaration
        return declare(entity, retry, **retry_policy)

    return maybe_declare


@contextmanager
def _pipelined_chord_setup(backend):
    """Set the chords up in one round trip to the result backend instead of two per chord.

    Celery's Redis result backend sets a chord up while its header is sent
    (``set_chord_size``: DEL of the counter ``<group>.c``, then SET of the size
    ``<group>.s``, each a round trip with the backend's retries). Inside the block those
    calls are only recorded; the caller calls the function this yields before any task of
    those chords reaches the broker (``_batched_publishes`` sends them when its block ends),
    and it sends the same commands, in order, in one pipeline under the same retry policy.
    Backends other than Celery's Redis one (or one that changes ``set_chord_size``) are
    left as they are."""
    try:
        from celery.backends.redis import RedisBackend
    except ImportError:  # pragma: no cover
        RedisBackend = None
    if RedisBackend is None or not isinstance(backend, RedisBackend) or \
            type(backend).set_chord_size is not RedisBackend.set_chord_size:
        yield lambda: None
        return
    pending: list[tuple[str, int]] = []

    def set_chord_size(group_id, chord_size):
        pending.append((group_id, chord_size))

    def send():
        if not pending:
            return
        ex = backend.chord_expires or None

        def run():
            with backend.client.pipeline(transaction=False) as pipe:
                for group_id, size in pending:
                    pipe.delete(backend.get_key_for_group(group_id, ".c"))
                    pipe.set(backend.get_key_for_group(group_id, ".s"), size, ex=ex)
                pipe.execute()

        backend.ensure(run, ())
        pending.clear()

    backend.set_chord_size = set_chord_size
    try:
        yield send
    finally:
        del backend.set_chord_size  # the class's method again


class _Sender:
    """Writes chunk ledgers and enqueues chunk canvases while the next chunks are staged.

    Ledger writes run a few at a time (each is a store round trip); one thread then enqueues
    the chunks' canvases, in chunk order, once their ledgers are written (a worker reads the
    ledger). Celery is used from that one thread only. At most ``depth`` chunks wait, so
    memory stays flat and a slow broker slows submission down instead of filling memory.

    The enqueue thread takes every chunk that is waiting (up to ``depth``) at once and
    publishes their tasks in one Redis pipeline (``_batched_publishes``), without result
    subscriptions (``_no_result_subscriptions``): per chunk 5 LPUSH round trips and 10
    (un)subscribe commands fewer. Their chords are set up in one more pipeline, before the
    tasks go (``_pipelined_chord_setup``), and a ``chunk_canvas`` chunk is sent by
    ``send_chunk``: the canvas's messages without building and copying the canvas.
    """

    def __init__(self, batch: Batch, canvas, threads: int = 4, depth: int = 16):
        from orchestrator.workflow import chunk_canvas, send_chunk

        self.batch, self.canvas, self.depth = batch, canvas, depth
        # the chunk canvas's own messages without building and copying the canvas
        self.send_one = send_chunk if canvas is chunk_canvas else \
            (lambda chunk: canvas(chunk).apply_async())
        self.puts = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="itx-ledger")
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="itx-enqueue", daemon=True)
        self.thread.start()

    def send(self, chunk: Chunk) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((self.puts.submit(self.batch.store.put_json, chunk.ref, chunk.ledger()), chunk))

    def _run(self) -> None:
        with _no_result_subscriptions(self.batch.app.backend):
            end = False
            while not end:
                job = self.q.get()
                if job is None:
                    break
                jobs = [job]  # and whatever else is waiting, without waiting for more
                while len(jobs) < self.depth:
                    try:
                        job = self.q.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        end = True
                        break
                    jobs.append(job)
                if self.error is not None:
                    continue  # drain after a failure; close() raises it
                try:
                    self._enqueue(jobs)
                except BaseException as e:
                    self.error = e

    def _enqueue(self, jobs: list) -> None:
        app = self.batch.app
        for written, _ in jobs:
            written.result()  # a worker reads the ledger: it must be there first
        try:
            with _batched_publishes(app), _pipelined_chord_setup(app.backend) as set_up:
                sent = [(self.send_one(chunk), chunk) for _, chunk in jobs]
                set_up()  # the chords first: their tasks go when the batch block ends
        except Exception:
            # the pipeline failed: which messages Redis got is uncertain. Send every chunk
            # again, one publish at a time with Celery's publish retries. At least once: a
            # chunk enqueued twice only computes the same records twice.
            sent = [(self.canvas(chunk).apply_async(), chunk) for _, chunk in jobs]
        _drop_subscriptions(app.backend)
        for res, chunk in sent:
            self.batch.track(res, len(chunk.items))

    def close(self, raise_error: bool = True) -> None:
        """Wait until every chunk handed over is enqueued; raise the first error, if any."""
        self.q.put(None)
        self.thread.join()
        self.puts.shutdown()
        if raise_error and self.error is not None:
            raise self.error


def submit(inputs: Iterable[str], spec: PipelineSpec, *, name: str | None = None,
           chunk: int | None = None, resume: bool = False, coco: str | None = None,
           images: str | None = None, limit: int | None = None, ids: list[int] | None = None,
           store=None, app=None, on_chunk: Callable[[Chunk], None] | None = None,
           order: list | None = None, flush_after: float = 2.0,
           image_column: str | None = None, keep_columns: list[str] | None = None) -> Batch:
    """Stream inputs into the store and enqueue one canvas per chunk, as chunks form.

    Items that already have a result record in this batch are not submitted again.
    ``resume`` continues an existing batch (with no inputs: the inputs it was created with).
    """
    from orchestrator.workflow import chunk_canvas

    s = get_settings()
    name = name or new_batch_name()
    try:
        check_name(name)
        check_cost(spec.resolved(s.profile))
    except ValueError as e:
        raise BatchError(str(e)) from None
    if app is None:
        from workers.app import app
    check_services(app)
    store = store or open_store()
    store.check()
    batch = Batch(name, store, app)
    inputs = list(inputs)
    if batch.exists():
        meta = batch.meta()
        if not resume:
            raise BatchError(f"batch {name!r} exists in {store.uri}; add --resume to submit "
                             f"only its items without a result record")
        spec = PipelineSpec.model_validate(meta["spec"])
        from orchestrator.ops import uncancel
        uncancel(name, store)  # a cancelled batch continues
        if not inputs and not coco:
            inputs = meta["inputs"]
            coco, images = meta.get("coco"), meta.get("images")
            limit, ids = meta.get("limit"), meta.get("ids")
            image_column, keep_columns = meta.get("image_column"), meta.get("keep_columns")
        chunk = chunk or meta.get("chunk")
        done = batch.result_ids()
        nchunk = sum(1 for _ in store.list(f"{batch.prefix}/chunks/"))
    else:
        if resume and not inputs and not coco:
            raise BatchError(f"nothing to resume: no batch {name!r} in {store.uri}")
        spec = spec.resolved(s.profile)
        done, nchunk = batch.result_ids(), 0
        # atomic: of submitters racing for one name, exactly one creates the batch
        if not store.put_json_if_absent(f"{batch.prefix}/batch.json", {
                "name": name, "spec": spec.model_dump(mode="json"),
                "inputs": [redact_url(i) for i in inputs], "coco": coco,
                "images": images, "limit": limit, "ids": ids, "chunk": chunk or s.chunk_size,
                "image_column": image_column, "keep_columns": keep_columns,
                "store": store.uri, "created": time.time()}):
            raise BatchError(f"batch {name!r} was just created by another submitter in "
                             f"{store.uri}; add --resume to submit only its items without a "
                             f"result record")
    chunk = chunk or s.chunk_size
    fp = spec.fingerprint()
    items = iter_inputs(inputs, coco=coco, images=images, limit=limit, ids=ids,
                        image_column=image_column, keep_columns=keep_columns)
    buf: list[Item] = []
    seen: set[str] = set()
    # new for every submission: workers cache the chunks they read under (ledger key, nonce)
    nonce = uuid.uuid4().hex[:12]

    def flush():
        nonlocal nchunk, buf
        if not buf:
            return
        # the ledger holds the whole chunk: tasks get a pointer to it, not the items
        c = Chunk(batch=name, chunk=nchunk, spec=spec, items=buf,
                  ref=f"{batch.prefix}/chunks/{nchunk:06d}.json", nonce=nonce)
        if sender is not None:  # with a broker: written and enqueued while staging goes on
            sender.send(c)
        else:  # eager (`itx run`): the chunk runs right here, now
            store.put_json(c.ref, c.ledger())
            batch.track(chunk_canvas(c).apply_async(), len(buf))
        if on_chunk:
            on_chunk(c)
        nchunk += 1
        buf = []

    sender = None if app.conf.task_always_eager else _Sender(batch, chunk_canvas)
    try:
        last_flush = time.monotonic()
        for it in stage_items(items, store, fp, done=done):
            if it is None:  # the input is slow: do not hold a partial chunk back for long
                if buf and time.monotonic() - last_flush > flush_after:
                    flush()
                    last_flush = time.monotonic()
                continue
            if it.id in seen:  # the same image twice in one batch: one record
                continue
            seen.add(it.id)
            if order is not None:
                order.append(it.id)
            if it.id in done:
                batch.skip_done()
                continue
            buf.append(it)
            if len(buf) >= chunk:
                flush()
                last_flush = time.monotonic()
        flush()
    except BaseException:
        if sender is not None:
            sender.close(raise_error=False)
        raise
    if sender is not None:
        sender.close()
    return batch
