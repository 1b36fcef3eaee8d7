"""Local random-weight checkpoints and adapters, for the offline demo, the tests and the benchmarks (no network).

- :mod:`checkpoints.build`  the builders: models, tokenizers, LoRA adapters.
- :mod:`checkpoints.demo`   the offline demo, built once into a cache directory and reused.

The worker imports this only to serve ``--demo``; nothing here imports the worker.
"""
