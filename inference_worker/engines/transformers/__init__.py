"""The in-process transformers engine (the default): continuous batching with a LoRA adapter per row."""

from .engine import TransformersEngine

__all__ = ["TransformersEngine"]
