#!/usr/bin/env sh
# Install tagseg with the PyTorch build that fits this machine.
#
#   ./install.sh [EXTRAS]          e.g. ./install.sh            or  ./install.sh test,crf,lite
#
# Without an NVIDIA GPU on Linux x86_64, PyPI's default PyTorch wheels carry ~4 GB of CUDA and
# triton libraries that a CPU never uses; this script takes PyTorch's CPU build from PyTorch's
# own wheel index instead (a few hundred MB), then installs tagseg beside it with pip. With a GPU,
# or on macOS, Windows or ARM Linux (where PyPI's wheels are already the right ones), it is the
# README's plain `pip install -c constraints.txt -e .`.
#
# Where the CPU index cannot be reached, it stops with a message before installing anything
# (no half-installed environment); TAGSEG_TORCH=pypi then takes PyPI's default build instead.
#
# Environment: PYTHON (default python3), TAGSEG_TORCH=auto|cpu|pypi (default auto: cpu when no
# NVIDIA GPU is found on Linux x86_64), TAGSEG_TORCH_INDEX (default the CPU index below),
# TAGSEG_INSTALL_DRY_RUN=1 (print the choice and the pip commands, run nothing).
set -eu

PYTHON=${PYTHON:-python3}
MODE=${TAGSEG_TORCH:-auto}
CPU_INDEX=${TAGSEG_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
EXTRAS=${1:-}
cd "$(dirname "$0")"

case "$MODE" in
  auto)
    if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
      MODE=pypi  # PyPI's wheels here have no CUDA
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      MODE=pypi  # a GPU: PyPI's default CUDA build
    else
      MODE=cpu
    fi ;;
  cpu|pypi) ;;
  *) echo "install.sh: TAGSEG_TORCH must be auto, cpu or pypi, got '$MODE'" >&2; exit 2 ;;
esac

TARGET="."
[ -n "$EXTRAS" ] && TARGET=".[$EXTRAS]"
if [ "${TAGSEG_INSTALL_DRY_RUN:-0}" = 1 ]; then
  echo "install.sh: torch build: $MODE"
  if [ "$MODE" = cpu ]; then
    echo "$PYTHON -m pip install --retries 0 --timeout 15 --index-url $CPU_INDEX" \
      "$(sed -n 's/^torch==\([^ #]*\).*/torch==\1+cpu/p' constraints.txt)" \
      "$(sed -n 's/^torchvision==\([^ #]*\).*/torchvision==\1+cpu/p' constraints.txt)"
  fi
  echo "$PYTHON -m pip install -c constraints.txt -e $TARGET"
  exit 0
fi

if [ "$MODE" = cpu ]; then
  echo "install.sh: no NVIDIA GPU found: PyTorch's CPU build from $CPU_INDEX"
  # The versions pinned in constraints.txt with the CPU build's local label (+cpu): a pip configured
  # with other indexes or find-links (which --index-url does not switch off) can then never pick a
  # CUDA build instead. No retries and a short timeout: an unreachable index fails in seconds,
  # before pip installs anything.
  TORCH=$(sed -n 's/^torch==\([^ #]*\).*/torch==\1+cpu/p' constraints.txt)
  VISION=$(sed -n 's/^torchvision==\([^ #]*\).*/torchvision==\1+cpu/p' constraints.txt)
  if ! "$PYTHON" -m pip install --retries 0 --timeout 15 --index-url "$CPU_INDEX" \
      "${TORCH:-torch}" "${VISION:-torchvision}"; then
    echo "install.sh: error: could not install PyTorch's CPU build from $CPU_INDEX (see pip's message above);" \
         "tagseg was not installed. Run where that index can be reached, or take PyPI's default build" \
         "(on Linux x86_64 it includes ~4 GB of CUDA libraries): TAGSEG_TORCH=pypi ./install.sh $EXTRAS" >&2
    exit 1
  fi
fi
# The CPU build now satisfies tagseg's torch requirement, so pip keeps it.
"$PYTHON" -m pip install -c constraints.txt -e "$TARGET"
"$PYTHON" -c "import torch, tagseg; print(f'install.sh: tagseg {tagseg.__version__} with torch {torch.__version__}' + (' (CUDA ' + torch.version.cuda + ')' if torch.version.cuda else ' (CPU build)'))"
