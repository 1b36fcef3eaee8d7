"""What crosses the wire between the worker and its clients, shared by every package and depending on none of them.

- :mod:`wire.protocol`  the message models, their parsing and encoding (docs/protocol.md is the reference).
- :mod:`wire.errors`    the error codes and the one error hierarchy (the adapter store raises these too).
- :mod:`wire.images`    what an image is, from its magic bytes.
- :mod:`wire.limits`    the worker's default limits and sampling ranges, as ``status`` reports them.
- :mod:`wire.schema`    the JSON Schema of the protocol (``python -m wire schema``; docs/protocol.schema.json).

Pure: pydantic only, no I/O, no torch, no WebSocket code. The worker (``inference_worker``), the adapter store
(``adapters``) and the playground and its client (``playground``) import it; it imports none of them.
"""
