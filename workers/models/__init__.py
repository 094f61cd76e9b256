"""Model profiles, the backend registry, the per-process cache and the tiny-random builder."""
from workers.models.errors import ModelMissingError
from workers.models.profiles import PROFILES, model_ref
from workers.models.registry import get_backend_class, register

__all__ = ["ModelMissingError", "PROFILES", "model_ref", "register", "get_backend_class"]
