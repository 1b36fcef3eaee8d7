"""``python -m inference_worker.healthcheck``: exit 0 when the local worker is ready (a container HEALTHCHECK).

Reads INFERENCE_PORT (default 8765) and asks ``GET /ready`` on 127.0.0.1 with a short timeout.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("INFERENCE_PORT", "8765")
    path = sys.argv[1] if len(sys.argv) > 1 else "/ready"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
