"""Stage reuse: each header stage's output for an image is kept in the store under a key made
of what determines it, so a later batch (any name) over the same images takes it from there
instead of running the model again::

    reuse/<stage>-<backend>/<h[:2]>/<h>.json     {"result": …, "ms": …}
    h = sha256(REUSE_VERSION, image content key, stage:backend, model ref, options)

The image content key is the staged object's name, ``inputs/<sha256 prefix>.<ext>`` (content
addressed); an image used where it already was in the store (not under ``inputs/``) has no
content key and is never reused. ``options`` are the stage's inputs besides the image that
change its output (VQA: the item's questions). Errors are never kept (they may be transient).
``PipelineSpec.reuse=False`` (``--no-reuse``) skips the lookups; fresh outputs are still kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re

from workers.pipeline.read import POOL
from workers.records import Item
from workers.storage import TransientStoreError, open_store

log = logging.getLogger(__name__)

REUSE_VERSION = 1  # bump when a stage's output format changes
_CONTENT = re.compile(r"(?:^|/)inputs/([0-9a-f]{32,64}\.[A-Za-z0-9]{1,8})$")


def content_of(item: Item) -> str | None:
    """The content key of the item's staged image, or None (not content-addressed)."""
    m = _CONTENT.search(item.image or "")
    return m.group(1) if m else None


def reuse_key(content: str, key: str, ref: str, options) -> str:
    h = hashlib.sha256(json.dumps([REUSE_VERSION, content, key, ref, options],
                                  sort_keys=True).encode()).hexdigest()
    return f"reuse/{key.replace(':', '-')}/{h[:2]}/{h}.json"


def _get(k: str):
    try:
        return open_store().get_json(k)
    except TransientStoreError:
        return None
    except Exception:  # not there (the common case) or unreadable: compute it
        return None


def lookup(keys: dict[str, str]) -> dict[str, dict]:
    """``item id -> {"result", "ms"}`` for the ids whose reuse key is in the store."""
    ids = list(keys)
    got = POOL.map(lambda i: _get(keys[i]), ids)
    return {i: v for i, v in zip(ids, got) if isinstance(v, dict) and "result" in v}


def keep(keys: dict[str, str], results: dict, ms: dict) -> None:
    """Store fresh outputs under their reuse keys (best effort: a failure costs only reuse)."""
    store = open_store()

    def put(i):
        try:
            store.put_json(keys[i], {"result": results[i], "ms": ms.get(i)})
        except Exception as e:
            log.warning("could not keep %s for reuse: %s", keys[i], e)

    list(POOL.map(put, [i for i in results if i in keys]))
