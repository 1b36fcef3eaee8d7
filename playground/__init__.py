"""The playground: a Streamlit app and a WebSocket client for the inference worker.

- :mod:`playground.client`  talks: the asyncio WebSocket client (also a CLI, ``python -m playground.client``).
- :mod:`playground.app`     renders: ``inference-playground`` (``python -m playground``) runs it in Streamlit; it puts
  together the tabs of :mod:`playground.tabs`, one module each.
- :mod:`playground.eval`     the A/B evaluation over a set of diagrams (also a CLI, ``python -m playground.eval``).
- :mod:`playground.store`    the history on disk (SQLite), shared by every session.
- :mod:`playground.runs`, :mod:`playground.history`, :mod:`playground.diff`, :mod:`playground.scoring`,
  :mod:`playground.images`, :mod:`playground.settings`: the pure logic the app uses (one run of one or two streams,
  run records and their export, A/B comparison, scores, images, the playground's settings).

Nothing here imports torch or transformers: the playground ships in a slim image. Of the worker's side it uses only
:mod:`wire` (the pure message models, error codes and image sniffing the worker uses too).
"""
