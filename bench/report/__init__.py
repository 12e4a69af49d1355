"""Layer report (bench/layers.py): statistics, tables, plots, the HTML page."""
