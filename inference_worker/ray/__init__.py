"""Scale-out on Ray Serve: model replicas behind the same WebSocket protocol, with adapter-affinity routing.

Two halves, each importing Ray only when used:

- ``replica.py`` — the Ray Serve application: ``Replica`` holds the model with the in-process transformers engine
  (built as the worker builds it) and streams a request's events; adapters load per replica through
  ``@serve.multiplexed``, keyed by the adapter's content digest, from the same store and verified cache. ``Board``
  collects what every replica holds (adapters, load) for the fronts' status, ``/metrics`` and readiness.
- ``engine.py`` — :class:`RayEngine`, the engine of a front (``INFERENCE_ENGINE=ray``): it holds no model and sends
  each request through a ``DeploymentHandle`` with ``multiplexed_model_id=<digest>``.

``python -m inference_worker.ray`` deploys the application on a cluster (or a local one).
"""

REPLICA_DEPLOYMENT = "Replica"
BOARD_DEPLOYMENT = "Board"
