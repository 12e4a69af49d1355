"""Layer model (prefbench/layers.py): models, padding-free forwards, log-probs, FLOPs."""
