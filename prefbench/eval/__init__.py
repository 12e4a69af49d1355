"""Layer eval (prefbench/layers.py): samples, judges, metrics, frontiers."""
