"""Routing-quality benchmark: Herd's signals against simple baseline policies on a simulated
fleet. Run ``uv run --all-packages python -m bench.routing --help`` from the repository root."""
