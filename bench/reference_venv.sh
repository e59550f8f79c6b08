#!/bin/sh
# Creates the throw-away venv with the reference product, ollama-herd 0.11.4, for
# `bench/load.py --reference-venv PATH`. It is never installed into the workspace.
#
#     sh bench/reference_venv.sh [/tmp/herd-ref-venv]
#
# The reference announces itself over mDNS when it starts: only ever run it inside a fresh
# network namespace (bench/load.py refuses otherwise and prints the command).
set -eu
venv=${1:-/tmp/herd-ref-venv}
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet ollama-herd==0.11.4
echo "reference installed: $venv/bin/herd, $venv/bin/herd-node"
