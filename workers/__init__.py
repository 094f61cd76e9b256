"""itx workers: everything that runs inside a Celery worker (and in embedded mode).

``celery -A workers worker -Q light`` finds the Celery app here.
"""
from workers.app import app

__all__ = ["app"]
