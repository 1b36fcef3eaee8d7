"""The playground: a Streamlit app and a WebSocket client for the inference worker.

- :mod:`playground.client`  talks: the asyncio WebSocket client (also a CLI, ``python -m playground.client``).
- :mod:`playground.app`     renders: ``streamlit run playground/app.py``.
- :mod:`playground.runs`, :mod:`playground.history`, :mod:`playground.diff`, :mod:`playground.images`: the pure
  logic the app uses (one run of one or two streams, the session history and its export, A/B comparison, images).

Nothing here imports torch or transformers: the playground ships in a slim image. From the worker it uses only
``inference_worker.protocol`` (pure message models).
"""
