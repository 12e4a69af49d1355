"""``python -m prefbench.perf``: the benchmark, or (``--trial IMPL METHOD CONFIG``) one trial in this process."""
import sys

from prefbench.io.errors import UserError
from prefbench.perf import main, trial_main

if __name__ == "__main__":
    if sys.argv[1:2] == ["--trial"]:
        sys.exit(trial_main(sys.argv[2:]))
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as exc:
        sys.exit(f"prefbench perf: {exc}")
