"""The figures, one module each. Each measures the worker (subject) beside the in-process baseline in the same run,
trials interleaved with the order reversed every trial (A B, B A, A B …) so that the machine's noise hits both.

    target.py              the options, the run and the model under test, shared by every figure
    measure.py             interleaved trials, threads released together, the rows that compare
    streaming.py           1  streaming overhead
    lora_cost.py           2  LoRA cost
    hot_swap_cold_load.py  3  hot swap (per model) and cold load from S3 (once per run)
    concurrency.py         4  concurrency
    ab.py                  5  A/B side by side
    memory.py              6  memory
    vllm_engine.py         7  the vLLM engine
    ray_serve.py           8  Ray Serve overhead
    http_sse.py            9  streaming over HTTP (SSE) beside the WebSocket
"""

from __future__ import annotations

from .ab import figure5
from .concurrency import figure4
from .hot_swap_cold_load import figure3_cold, figure3_swap
from .http_sse import figure9
from .lora_cost import figure2
from .measure import finite
from .memory import figure6
from .ray_serve import figure8
from .streaming import figure1
from .target import Options, Run, Target, say
from .vllm_engine import figure7

__all__ = ["Options", "Run", "Target", "figure1", "figure2", "figure3_cold", "figure3_swap", "figure4", "figure5",
           "figure6", "figure7", "figure8", "figure9", "finite", "say"]
