"""The Celery app: settings from ``workers.settings``, queues ``light`` and ``heavy``, routes.

    celery -A workers worker -Q light   # small GPUs: ocr, caption, vqa (the stage table's routes)
    celery -A workers worker -Q heavy   # large GPUs: compose (when generate follows), generate
    celery -A workers worker -Q ocr     # OCR on workers of its own, with ITX_ROUTES=ocr=ocr
    celery -A workers flower            # monitoring

Only JSON crosses the broker; a message in any other serialization is rejected.
"""
from __future__ import annotations

from celery import Celery
from celery.signals import heartbeat_sent
from kombu import Queue

from workers.settings import get_settings
from workers.tls import amqp_tls, warn_unverified

from workers.stages.table import HEAVY, LIGHT


def redis_tls(s) -> dict:
    """``ssl`` options for rediss:// brokers and result backends: the server's certificate is
    verified (ITX_REDIS_SSL_CERT_REQS=required) against ITX_REDIS_SSL_CA_CERTS."""
    import ssl

    reqs = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL,
            "none": ssl.CERT_NONE}[s.redis_ssl_cert_reqs]
    opts = {"ssl_cert_reqs": reqs, "ssl_ca_certs": s.redis_ssl_ca_certs,
            "ssl_certfile": s.redis_ssl_certfile, "ssl_keyfile": s.redis_ssl_keyfile}
    return {k: v for k, v in opts.items() if v not in ("", None)}


def queues(s) -> list[str]:
    """The queues this deployment uses: the two pools, and any ITX_ROUTES sends work to."""
    return [LIGHT, HEAVY] + sorted(set(s.routes.values()) - {LIGHT, HEAVY})


def celery_config(s=None) -> dict:
    s = s or get_settings()
    longest = max(s.light_time_limit, s.heavy_time_limit)
    # Redis puts a message back on its queue when its worker has not acked it for this long
    # (a worker killed mid-task); every live worker sweeps for such messages every few seconds
    visibility = s.visibility_timeout or 2 * longest + 600
    redis_opts = {"visibility_timeout": visibility,
                  "unacked_restore_interval": max(1, min(10, visibility // 10)),
                  "unacked_restore_throttle": 1}
    broker, backend = s.broker_url.get_secret_value(), s.result_backend.get_secret_value()
    tls = {}
    if broker.startswith("rediss://"):
        tls["broker_use_ssl"] = redis_tls(s)
    elif broker.startswith("amqps://"):
        tls["broker_use_ssl"] = amqp_tls(s)
    if backend.startswith("rediss://"):
        tls["redis_backend_use_ssl"] = redis_tls(s)
    if "rediss://" in (broker[:9], backend[:9]):
        warn_unverified(s)
    return dict(
        **tls,
        broker_url=broker,
        result_backend=backend,
        # JSON only, in both directions
        task_serializer="json",
        # task messages are zlib-compressed JSON: a chunk's seven messages carry chord and
        # chain bookkeeping that Redis holds three times over; this is a third of the bytes
        task_compression="zlib",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # queues and routes: list names equal queue names (no priorities), for KEDA
        # (and `ocr` where ITX_ROUTES sends a stage there: OCR on workers of its own)
        task_queues=tuple(Queue(q, routing_key=q) for q in queues(s)),
        task_default_queue=LIGHT,
        # header stages go where the stage table (or ITX_ROUTES) says: the canvas sets each
        # signature's queue; compose runs where the generator does, else on the light queue
        task_routes={"itx.stage": {"queue": LIGHT}, "itx.compose": {"queue": LIGHT},
                     "itx.generate": {"queue": HEAVY}},
        # nothing lost when a worker dies: ack after the work, redeliver on loss
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options=redis_opts,
        result_backend_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        # transient broker errors: publishing and result writes retry with backoff, bounded
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 10, "interval_start": 0.2,
                                   "interval_step": 1, "interval_max": 5},
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        result_backend_max_sleep_between_retries_ms=5000,
        # cold shutdown (SIGQUIT) lets running tasks finish for this long, then cancels them;
        # their messages go back on the queue at once instead of after the visibility timeout
        worker_soft_shutdown_timeout=s.soft_shutdown_timeout,
        result_expires=7 * 24 * 3600,
        result_extended=False,
        # task events (received, started, succeeded, …) only while someone monitors:
        # Flower turns them on in every worker itself (its enable_events option, on by
        # default, broadcasts `enable_events` every 5 s); `celery worker -E` forces them.
        # No "sent" event per task from the submitter and no STARTED state write to the
        # result backend: all three cost broker traffic per task and nothing else reads them
        worker_send_task_events=False,
        task_send_sent_event=False,
        task_track_started=False,
        worker_hijack_root_logger=False,
        # keep a worker healthy over millions of items
        worker_max_tasks_per_child=s.max_tasks_per_child or None,
        worker_max_memory_per_child=s.max_memory_per_child_kb or None,
        # a pool process that loads models at start (ITX_PRELOAD) needs longer to report alive
        worker_proc_alive_timeout=300 if s.preload else 4,
    )


app = Celery("itx", include=["workers.tasks"])
app.conf.update(celery_config())


@heartbeat_sent.connect
def _touch_heartbeat_file(sender=None, **_):
    """Container liveness: the worker's main loop touches ITX_HEARTBEAT_FILE at each event
    heartbeat (every 2 s); probes read its age (docker/Dockerfile HEALTHCHECK, k8s/base)."""
    path = get_settings().heartbeat_file
    if path is not None:
        try:
            path.touch()
        except OSError:
            pass
