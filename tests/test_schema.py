"""docs/protocol.schema.json is what `python -m wire schema` prints, and it accepts what the models accept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wire import protocol as p
from wire.errors import UnknownType
from wire.schema import protocol_schema

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "docs" / "protocol.schema.json"


def test_checked_in_schema_is_the_generated_one():
    """The checked-in schema is regenerated with every change to the models: `python -m wire schema`."""
    printed = subprocess.run([sys.executable, "-m", "wire", "schema"], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=60).stdout
    assert json.loads(printed) == protocol_schema()
    assert json.loads(CHECKED_IN.read_text()) == protocol_schema(), "run: python -m wire schema > " + str(CHECKED_IN)


def test_schema_accepts_valid_messages_and_refuses_invalid_ones():
    """Client messages the parser accepts validate against ClientMessage; server messages against ServerMessage."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = protocol_schema()
    client = jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/ClientMessage"})
    server = jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/ServerMessage"})
    good = [
        {"type": "ping", "request_id": "1"},
        {"type": "load_adapter", "adapter_path": None},
        {"type": "generate", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                                     {"type": "image", "image": "AAAA"}]}],
         "max_tokens": 8, "temperature": 0.5, "stop": ["\n"], "adapter": None},
        {"type": "cancel", "session_id": "s"},
        {"type": "status"},
        {"type": "list_adapters"},
    ]
    for message in good:
        p.parse_client_message(json.dumps(message))
        client.validate(message)
    for bad in ({"type": "ping", "extra": 1}, {"type": "generate", "messages": []}, {"type": "cancel"},
                {"type": "generate", "messages": [{"role": "user", "content": "x"}], "max_tokens": "8"}):
        assert not client.is_valid(bad), bad
    error = p.error_message(UnknownType("nope"))
    for reply in (p.Pong(request_id="1"), p.Token(content="x", session_id="s"), error,
                  p.AdapterProgress(adapter_path="a", stage="loading")):
        server.validate(json.loads(p.encode(reply)))
    assert not server.is_valid({"type": "error", "code": "no_such_code", "message": "", "retryable": False})
