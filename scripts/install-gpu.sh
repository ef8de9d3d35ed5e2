#!/usr/bin/env bash
# Install localdistil for CUDA GPUs: a CUDA build of PyTorch, then the project with its `gpu`
# extra (bitsandbytes, for train.quantization: 4bit). Dockerfile.gpu runs this script; run it
# the same way on a GPU machine without Docker, from the repository root:
#
#   scripts/install-gpu.sh            # torch, then the project, into .venv (created if missing)
#   scripts/install-gpu.sh torch      # only the first step (the image caches it in its own layer)
#   scripts/install-gpu.sh project    # only the second step
#
# Settings (environment variables):
#   PYTHON       the interpreter that creates the virtual environment (default: python3)
#   VENV         the virtual environment (default: .venv)
#   TORCH        the torch requirement (default: torch, the newest release). The CPU machines'
#                pin (torch==2.13.0 in the Makefile) is not used here: on Linux, PyPI's torch is
#                the CUDA build.
#   TORCH_INDEX  a PyTorch wheel index for another CUDA version, e.g.
#                https://download.pytorch.org/whl/cu128 for a driver older than CUDA 13's
#                (default: none, PyPI's build)
#   EXTRAS       the project's extras (default: gpu,dev -- dev brings pytest for the GPU tests)
#   EDITABLE     1: pip install -e (default, for a checkout); 0: a regular install (the image)
set -euo pipefail

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH="${TORCH:-torch}"
TORCH_INDEX="${TORCH_INDEX:-}"
EXTRAS="${EXTRAS:-gpu,dev}"
EDITABLE="${EDITABLE:-1}"
STEP="${1:-all}"

cd "$(dirname "$0")/.."

case "${STEP}" in
  all | torch | project) ;;
  *)
    echo "usage: $0 [all|torch|project]" >&2
    exit 2
    ;;
esac

if ! "${PYTHON}" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "error: localdistil needs Python >= 3.10; ${PYTHON} is $("${PYTHON}" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x "${VENV}/bin/python" ]; then
  "${PYTHON}" -m venv "${VENV}"
fi
pip_install() {
  "${VENV}/bin/python" -m pip install --disable-pip-version-check "$@"
}

if [ "${STEP}" = all ] || [ "${STEP}" = torch ]; then
  if [ -n "${TORCH_INDEX}" ]; then
    pip_install --index-url "${TORCH_INDEX}" "${TORCH}"
  else
    pip_install "${TORCH}"
  fi
fi

if [ "${STEP}" = all ] || [ "${STEP}" = project ]; then
  if [ "${EDITABLE}" = 1 ]; then
    pip_install -e ".[${EXTRAS}]"
  else
    pip_install ".[${EXTRAS}]"
  fi
  # Say plainly whether the GPU is usable; an install on a machine without one is not an error
  # (an image is often built where no GPU is visible).
  "${VENV}/bin/python" -c 'import torch
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); GPU visible: "
      + (torch.cuda.get_device_name(0) if cuda else "none"))
if torch.version.cuda is None:
    raise SystemExit("error: this torch is a CPU-only build. Remove the virtual environment and "
                     "run this script again, or set TORCH_INDEX to a CUDA wheel index")'
fi
