"""``python -m inference_worker``: CLI flags (mirroring the environment variables) → settings → serve."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any, get_args

from pydantic import ValidationError

from .config import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference_worker",
        description="WebSocket inference worker for Qwen3-VL with hot-swappable LoRA adapters. "
        "Every flag mirrors an environment variable; flags win.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, field in Settings.model_fields.items():
        env = Settings.env_name(name)
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} [env {env}]"
        default = field.get_default(call_default_factory=True)
        annotation = field.annotation
        if annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        choices = _literal_choices(annotation)
        shown = "(none)" if default is None else ("***" if name == "auth_token" else default)
        parser.add_argument(flag, default=None, choices=choices, metavar=env, help=f"{help_text} (default: {shown})")
    return parser


def _literal_choices(annotation: Any) -> list[str] | None:
    args = get_args(annotation)
    if args and all(isinstance(a, str) for a in args):
        return list(args)
    return None


def settings_from_args(argv: list[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_args(argv)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            field = str(err["loc"][0]) if err["loc"] else "settings"
            env = Settings.env_name(field) if field in Settings.model_fields else field
            print(f"configuration error: {env}: {err['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.log_level != "debug":
        # websockets logs every connection and HTTP probe at INFO: keep those for debugging.
        logging.getLogger("websockets").setLevel(logging.WARNING)
    if settings.hf_home:  # before transformers is imported
        os.environ["HF_HOME"] = str(settings.hf_home)
    from .server import run

    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
