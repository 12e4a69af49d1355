"""Layer data (prefbench/layers.py): rows -> cleaned pairs -> tokens -> method views."""
