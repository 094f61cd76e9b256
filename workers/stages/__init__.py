"""Stages: plain batch functions and backend classes, no Celery in them.

ocr -> caption -> vqa -> edit -> generate. Backends register themselves with
``workers.models.registry.register``; import a stage module to use its backends.
"""
