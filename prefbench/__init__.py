"""prefbench: compare preference-optimization methods through one pipeline and one trainer."""
from pathlib import Path

__version__ = "0.1.0"
CONF_DIR = Path(__file__).resolve().parent / "conf"
