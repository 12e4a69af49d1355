"""`prefbench report` agrees with `prefbench sweep` on the exit status; the report's method order comes
from the methods package."""
import json

from tests.conftest import prefbench
from tests.test_stats import fake_sweep


def test_report_exits_1_with_the_status_line_when_a_job_is_not_done(tmp_path):
    sweep = fake_sweep(tmp_path / "sweep", prompts=False)
    done = prefbench("report", sweep, check=False)
    assert done.returncode == 0 and "All 36 jobs done." in done.stdout, done.stderr
    summary_path = sweep / "reviews-tiny-s-dpo-s2" / "summary.json"
    summary = json.loads(summary_path.read_text()) | {"status": "failed", "error": "RuntimeError: boom"}
    summary_path.write_text(json.dumps(summary))
    failed = prefbench("report", sweep, check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "1 of 36 jobs are not done: 1 failed." in failed.stdout
    assert f"report: {sweep / 'report' / 'index.html'}" in failed.stdout


def test_the_report_lists_methods_by_family_with_the_main_five_in_their_order():
    import random

    import pandas as pd

    from prefbench import methods
    from prefbench.report.tables import series_order

    registry = methods.registry()
    names = [*registry, "not_installed", "dpo [strength=2.0]"]
    random.Random(0).shuffle(names)
    order = [s.split(" [")[0] for s in series_order(pd.DataFrame({"series": names}))]
    main = [m for m in order if m in ("sft", "dpo", "ipo", "kto", "orpo")]
    assert main == ["sft", "dpo", "dpo", "ipo", "kto", "orpo"]  # the default sweep's order, as before
    assert order[0] == "sft" and order[-1] == "not_installed"  # a method not registered here: last

    def group(test):
        return [i for i, m in enumerate(order) if m in registry and test(registry[m])]

    online = group(lambda c: c.needs_samples)
    free = group(lambda c: not c.needs_reference and c.view != "sft")
    anchored = group(lambda c: c.needs_reference and not c.needs_samples)
    for members in (online, free, anchored):  # each family together, in the order of FAMILIES
        assert members == list(range(members[0], members[0] + len(members)))
    assert anchored[-1] < free[0] < online[0] and online[-1] == len(order) - 2
