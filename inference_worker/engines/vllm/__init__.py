"""The vLLM engine (INFERENCE_ENGINE=vllm): vLLM's AsyncLLM behind the engine interface. Only the vLLM venv
(``make venv-vllm``) has vLLM; nothing outside this package imports it."""

from .engine import VllmEngine

__all__ = ["VllmEngine"]
