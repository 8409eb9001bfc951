"""The scripts that produced the committed results under results/: run each from the
repository root as `python -m experiments.<topic>.<script>` (experiments/README.md)."""
