"""Layer model (bench/layers.py): models, padding-free forwards, log-probs, FLOPs."""
