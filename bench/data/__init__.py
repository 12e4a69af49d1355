"""Layer data (bench/layers.py): rows -> cleaned pairs -> tokens -> method views."""
