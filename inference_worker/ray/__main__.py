"""``python -m inference_worker.ray``: deploy the model replicas on a Ray cluster (or a local one).

Every flag of ``python -m inference_worker`` applies (the model, the adapter store, the limits, and the RAY_* settings:
cluster address, application name, replicas, autoscaling bounds, CPUs/GPUs per replica). It runs until SIGTERM or
Ctrl-C and then deletes the application; with ``--detach`` it deploys and exits, leaving the application on the
cluster (``serve.delete`` or ``serve shutdown`` removes it). Fronts: ``INFERENCE_ENGINE=ray python -m
inference_worker`` with the same RAY_ADDRESS and RAY_APP_NAME.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from pydantic import ValidationError

from ..__main__ import build_parser
from ..config import Settings

log = logging.getLogger("inference_worker.ray")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.prog = "python -m inference_worker.ray"
    parser.description = "Deploy the inference worker's model replicas as a Ray Serve application."
    parser.add_argument("--detach", action="store_true",
                        help="deploy and exit; the application stays on the cluster")
    args = parser.parse_args(argv)
    detach = args.__dict__.pop("detach")
    try:
        settings = Settings(**{k: v for k, v in vars(args).items() if v is not None})
    except ValidationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.ray_address == "local" and detach:
        print("configuration error: --detach needs a cluster that outlives this process (RAY_ADDRESS)", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # an old token file must not turn auth on by surprise

    import ray
    from ray import serve

    from .replica import build_app

    ray.init(address=settings.ray_address, include_dashboard=False, log_to_driver=True)
    log.info("cluster address %s", ray.get_runtime_context().gcs_address)  # RAY_ADDRESS for fronts
    serve.start(proxy_location="Disabled")  # the fronts speak the protocol: no Serve HTTP proxy
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        log.info("deploying %r on %s", settings.ray_app_name, settings.ray_address)
        serve.run(build_app(settings), name=settings.ray_app_name, route_prefix=None)
        log.info("application %r running; fronts: INFERENCE_ENGINE=ray RAY_APP_NAME=%s", settings.ray_app_name,
                 settings.ray_app_name)
        if detach:
            return 0
        stop.wait()
        log.info("deleting application %r", settings.ray_app_name)
        serve.delete(settings.ray_app_name)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
