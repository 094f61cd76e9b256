"""Model profiles, the loader, the per-process cache, distribution and the tiny-random builder.
Which backends exist and what weights they load is the stage table's
(``workers.stages.table``)."""
from workers.models.errors import ModelMissingError
from workers.models.profiles import PROFILES, model_ref

__all__ = ["ModelMissingError", "PROFILES", "model_ref"]
