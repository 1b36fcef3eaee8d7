"""The HTTP API beside the WebSocket protocol, on the same request front (``Service.generate``): the original
service's ``/infer`` (``original.py``), OpenAI-compatible chat (``openai.py``), offline docs. FastAPI on uvicorn in
the worker's event loop (``server.py``), on HTTP_PORT."""
