# The inference worker on the vLLM engine (INFERENCE_ENGINE=vllm), for NVIDIA GPU hosts (the NVIDIA container toolkit;
# docker-compose.vllm.yml). vLLM pins its own torch and transformers (requirements/vllm.txt), so this is an image of
# its own, not the transformers worker's. The package is installed (without dependencies: they are pinned above) so
# that vLLM finds the worker's plugin entry point. No model weights are baked in: they download into HF_HOME.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin worker \
 && mkdir -p /data/hf /data/adapter-cache /data/demo /import \
 && chown -R worker:worker /data

WORKDIR /app
COPY requirements/base.txt requirements/vllm.txt requirements/
RUN pip install -r requirements/vllm.txt
COPY pyproject.toml ./
COPY wire/ wire/
COPY checkpoints/ checkpoints/
COPY inference_worker/ inference_worker/
COPY adapters/ adapters/
RUN pip install --no-deps .

USER worker
ENV HF_HOME=/data/hf \
    ADAPTER_CACHE_DIR=/data/adapter-cache \
    INFERENCE_DEMO_DIR=/data/demo \
    INFERENCE_HOST=0.0.0.0 \
    INFERENCE_PORT=8765 \
    HTTP_PORT=8000 \
    INFERENCE_ENGINE=vllm \
    DEVICE=cuda
EXPOSE 8765 8000
# Ready once vLLM's engine is up (model download, weights, CUDA graphs): a long start period.
HEALTHCHECK --interval=15s --timeout=6s --start-period=30m --retries=3 CMD ["python", "-m", "inference_worker.healthcheck"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "inference_worker"]
