"""``inference-playground`` (or ``python -m playground``): ``streamlit run`` on the playground's app.

Every argument goes to ``streamlit run``: ``inference-playground --server.port 8501 --server.headless true``.
The worker's address is ``INFERENCE_WS_URL`` (default ``ws://localhost:8765``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


def main(argv: Sequence[str] | None = None) -> int:
    from streamlit.web.cli import main as streamlit

    args = list(sys.argv[1:] if argv is None else argv)
    streamlit.main(args=["run", str(APP), *args], prog_name="inference-playground")  # exits when streamlit does
    return 0


if __name__ == "__main__":
    sys.exit(main())
