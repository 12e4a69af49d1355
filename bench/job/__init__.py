"""Layer job (bench/layers.py): a config -> a run folder; sweeps."""
