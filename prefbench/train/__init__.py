"""Layer train (prefbench/layers.py): the one trainer."""
