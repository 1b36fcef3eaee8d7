"""The playground's own settings, from the environment (the worker's URL and token are read by the app and client).

| variable | default | meaning |
|---|---|---|
| ``PLAYGROUND_HISTORY_DIR`` | ``~/.local/share/inference-worker/playground`` | where the history database lives |
| ``PLAYGROUND_EVAL_MAX_ITEMS`` | ``200`` | diagrams in one set evaluation |
| ``PLAYGROUND_EVAL_MAX_ARCHIVE_BYTES`` | ``268435456`` | size of the files of one set (a zip's contents) |
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_history_dir() -> Path:
    return Path.home() / ".local" / "share" / "inference-worker" / "playground"


class PlaygroundSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PLAYGROUND_", extra="ignore")

    history_dir: Path = Field(default_factory=default_history_dir)
    eval_max_items: int = Field(200, ge=1)
    eval_max_archive_bytes: int = Field(256 * 1024 * 1024, ge=1)
