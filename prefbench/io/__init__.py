"""Layer io (prefbench/layers.py): files and caches every step uses."""
