"""MODELS, the registry every model module adds its builders to with @register_model.

Its own module (not the package's __init__, which imports the model modules to fill it), so a
model module imports its registry without importing the package that imports it: no import circle.
"""
from __future__ import annotations

from pipeline.registry import Registry

MODELS = Registry("model")
register_model = MODELS.register
