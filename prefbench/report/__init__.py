"""Layer report (prefbench/layers.py): statistics, tables, plots, the HTML page."""
