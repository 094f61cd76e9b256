"""Captioning backends: one module per family; the stage table declares which is which."""
