"""Engines behind one interface (``base.py``); the server and sessions use nothing else.

What the engines share is written once here: ``streams.py`` (a request's events on their way to the consumer, the
request aborted when it stops listening), ``capabilities.py`` (what the validator learns from a model: sampling
defaults, characters per token) and ``errors.py`` (a library's error as text for a client). The adapter rules that
depend on the model live in ``adapters.validate.check_compatible``, over a table of module shapes each engine supplies.
"""
