# The inference worker. CUDA-capable: the torch 2.14.1 wheel from PyPI carries the CUDA runtime, so the image runs
# on a GPU host with the NVIDIA container toolkit (DEVICE=cuda) and on any CPU host (DEVICE=cpu). No model weights
# are baked in: they download into HF_HOME (a volume) on first start.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin worker \
 && mkdir -p /data/hf /data/adapter-cache /data/demo /import \
 && chown -R worker:worker /data

WORKDIR /app
COPY requirements/ requirements/
RUN pip install -r requirements/worker.txt
COPY wire/ wire/
COPY checkpoints/ checkpoints/
COPY inference_worker/ inference_worker/
COPY adapters/ adapters/

USER worker
ENV HF_HOME=/data/hf \
    ADAPTER_CACHE_DIR=/data/adapter-cache \
    INFERENCE_DEMO_DIR=/data/demo \
    INFERENCE_HOST=0.0.0.0 \
    INFERENCE_PORT=8765 \
    HTTP_PORT=8000
EXPOSE 8765 8000
# Ready only once the model is loaded: the first start downloads ~4.3 GB, hence the long start period.
HEALTHCHECK --interval=15s --timeout=6s --start-period=20m --retries=3 CMD ["python", "-m", "inference_worker.healthcheck"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "inference_worker"]
