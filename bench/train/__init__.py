"""Layer train (bench/layers.py): the one trainer."""
