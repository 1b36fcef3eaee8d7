"""``python -m wire schema``: print the JSON Schema of the protocol (docs/protocol.schema.json is its output)."""

from __future__ import annotations

import argparse
import json
import sys

from .schema import protocol_schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wire", description="The worker's wire protocol.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("schema", help="print the JSON Schema of every client and server message")
    parser.parse_args(argv)
    print(json.dumps(protocol_schema(), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
