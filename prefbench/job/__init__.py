"""Layer job (prefbench/layers.py): a config -> a run folder; sweeps."""
