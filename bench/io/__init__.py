"""Layer io (bench/layers.py): files and caches every step uses."""
