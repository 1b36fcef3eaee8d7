"""The request validator: every limit from the settings, the model's capabilities, defaults. No server, no model."""

from __future__ import annotations

import json

import pytest

from inference_worker.config import Settings
from inference_worker.engines.base import Capabilities
from inference_worker.images import ImageLimits
from inference_worker.validation import GenerateValidator, RequestLimits
from wire import protocol as p
from wire.errors import ErrorCode, ServiceError

TEXT = {"type": "generate", "messages": [{"role": "user", "content": "Describe the process."}]}


def validator(vision=True, defaults=None, **limits):
    caps = Capabilities(vision=vision, max_chars_per_token=4, sampling_defaults=defaults or {})
    return GenerateValidator(RequestLimits(**limits), caps, ImageLimits(), "the-model")


def code_of(v, **fields):
    with pytest.raises(ServiceError) as info:
        v.validate(p.parse_client_message(json.dumps({**TEXT, **fields})))
    return info.value.code


def test_limits_are_enforced():
    """Stop string length and the image count are bounded by the settings' limits (the counts of messages, parts and
    stop strings by the parser's)."""
    v = validator(max_stop_length=4, max_images_per_request=1)
    assert code_of(v, stop=["abcde"]) == ErrorCode.INVALID_MESSAGE
    two_images = [{"role": "user", "content": [{"type": "image", "image": "aGk="}] * 2}]
    assert code_of(v, messages=two_images) == ErrorCode.IMAGE_TOO_LARGE
    v.validate(p.parse_client_message(json.dumps({**TEXT, "stop": ["a", "abcd"]})))
    limits = Settings(max_stop_strings=2, max_chat_messages=2).parse_limits()
    for fields in ({"stop": ["a", "b", "c"]}, {"messages": [{"role": "user", "content": "x"}] * 3}):
        with pytest.raises(ServiceError) as info:
            p.parse_client_message(json.dumps({**TEXT, **fields}), limits)
        assert info.value.code == ErrorCode.INVALID_MESSAGE


def test_sampling_ranges_come_from_the_settings():
    """temperature and repetition_penalty above the configured maxima are refused; status reports the same ranges."""
    settings = Settings(temperature_max=2.0, repetition_penalty_max=3.0)
    limits = settings.request_limits()
    v = GenerateValidator(limits, Capabilities(True, 4), ImageLimits(), "m")
    assert code_of(v, temperature=2.5) == ErrorCode.INVALID_MESSAGE
    assert code_of(v, repetition_penalty=3.5) == ErrorCode.INVALID_MESSAGE
    v.validate(p.parse_client_message(json.dumps({**TEXT, "temperature": 2.0, "repetition_penalty": 3.0})))
    assert limits.sampling_ranges()["temperature"] == [0.0, 2.0]
    assert limits.sampling_ranges()["repetition_penalty"] == [0.0, 3.0]


def test_capabilities_and_prompt_size():
    """Images on a text-only model, a doubled system prompt and an impossible prompt length are refused early."""
    image = [{"role": "user", "content": [{"type": "image", "image": "aGk="}, {"type": "text", "text": "x"}]}]
    assert code_of(validator(vision=False), messages=image) == ErrorCode.IMAGES_NOT_SUPPORTED
    assert code_of(validator(), system_prompt="s", messages=[{"role": "system", "content": "s"},
                                                             {"role": "user", "content": "u"}]) == (
        ErrorCode.INVALID_MESSAGE)
    assert code_of(validator(max_prompt_tokens=10), messages=[{"role": "user", "content": "x" * 41}]) == (
        ErrorCode.PROMPT_TOO_LONG)
    validator(max_prompt_tokens=10).validate(p.parse_client_message(
        json.dumps({**TEXT, "messages": [{"role": "user", "content": "x" * 40}]})))


def test_max_tokens_is_capped_and_defaults_are_filled():
    """max_tokens above MAX_NEW_TOKENS is capped, absent is the default; omitted sampling takes the model's defaults."""
    v = validator(default_max_tokens=32, max_new_tokens=64,
                  defaults={"temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": None})
    capped = v.validate(p.parse_client_message(json.dumps({**TEXT, "max_tokens": 10_000}))).sampling
    assert capped.max_tokens == 64
    default = v.validate(p.parse_client_message(json.dumps({**TEXT, "top_k": 5, "seed": 3}))).sampling
    assert (default.max_tokens, default.temperature, default.top_k, default.top_p, default.seed) == (
        32, 0.7, 5, 0.8, 3)
    greedy = v.validate(p.parse_client_message(json.dumps({**TEXT, "temperature": 0}))).sampling
    assert greedy.greedy and 0 <= greedy.seed < 2**63


def test_interface_validation_and_server_layers_import_no_torch():
    """The engine interface, the validator and the server/session layer load without torch (only engines do)."""
    import subprocess
    import sys

    code = ("import sys; import inference_worker.engines.base, inference_worker.validation, "
            "inference_worker.session, inference_worker.server; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=__import__("pathlib").Path(__file__).parents[2])
