#!/usr/bin/env bash
# Rewrite constraints.txt from an environment where `make test` passed: the exact tested set that
# the Makefile installs against (pip install -c constraints.txt -e ".[dev]").
# torch is left out: scripts/install_torch.sh picks its CPU or CUDA build, and the CPU build's local
# version (+cpu) does not exist on PyPI. dsnb itself is left out (installed editable from the clone).
# `pip list --format=freeze` writes NAME==VERSION also for a package installed from a local wheel.
# Usage: scripts/update_constraints.sh [PYTHON]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
{
    echo "# The versions \`make test\` passed with (Python $("$PY" -c 'import platform; print(platform.python_version())'), CPU)."
    echo "# Written by scripts/update_constraints.sh; the Makefile installs with -c constraints.txt."
    echo "# pyproject.toml's lower bounds say what is supported; this file says what was tested."
    "$PY" -m pip list --format=freeze --exclude-editable --disable-pip-version-check | grep -v -i -E '^(torch|dsnb|pip|setuptools|wheel)(==| @)' | LC_ALL=C sort -f
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pinned packages"
