"""The Celery app: settings from ``workers.settings``, queues ``light`` and ``heavy``, routes.

    celery -A workers worker -Q light   # small GPUs: ocr, caption, vqa, compose
    celery -A workers worker -Q heavy   # large GPUs: generate
    celery -A workers flower            # monitoring

Only JSON crosses the broker; a message in any other serialization is rejected.
"""
from __future__ import annotations

from celery import Celery
from celery.signals import heartbeat_sent
from kombu import Queue

from workers.settings import get_settings

LIGHT, HEAVY = "light", "heavy"
LIGHT_TASKS = ("itx.ocr", "itx.caption", "itx.vqa", "itx.compose")
HEAVY_TASKS = ("itx.generate",)


def celery_config(s=None) -> dict:
    s = s or get_settings()
    longest = max(s.light_time_limit, s.heavy_time_limit)
    return dict(
        broker_url=s.broker_url,
        result_backend=s.result_backend,
        # JSON only, in both directions
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # queues and routes: list names equal queue names (no priorities), for KEDA
        task_queues=(Queue(LIGHT, routing_key=LIGHT), Queue(HEAVY, routing_key=HEAVY)),
        task_default_queue=LIGHT,
        task_routes={**{t: {"queue": LIGHT} for t in LIGHT_TASKS},
                     **{t: {"queue": HEAVY} for t in HEAVY_TASKS}},
        # nothing lost when a worker dies: ack after the work, redeliver on loss
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options={"visibility_timeout": 2 * longest + 600},
        result_backend_transport_options={"visibility_timeout": 2 * longest + 600},
        broker_connection_retry_on_startup=True,
        result_expires=7 * 24 * 3600,
        result_extended=False,
        # Flower and progress
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
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
