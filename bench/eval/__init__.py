"""Layer eval (bench/layers.py): samples, judges, metrics, frontiers."""
