"""A user's own configs compose with the shipped ones: a folder on Hydra's search path (``file://DIR`` or
``pkg://package.conf``) adds method and sweep yamls, and the run writes under ``./results`` of the folder it
starts in."""
import json

import pytest

from prefbench.cli import check_overrides, config_root
from prefbench.io.errors import UserError
from tests.conftest import SMOKE, prefbench

MY_LOSS = "name: dpo\nbeta: 0.5\n"  # a shipped method under a new name, with its own settings
MY_STUDY = """# @package _global_
sweep_name: my_study
hydra:
  sweeper:
    params:
      method: sft,my_loss
"""


def user_conf(root):
    (root / "conf" / "method").mkdir(parents=True)
    (root / "conf" / "sweep").mkdir()
    (root / "conf" / "method" / "my_loss.yaml").write_text(MY_LOSS)
    (root / "conf" / "sweep" / "my_study.yaml").write_text(MY_STUDY)
    return root / "conf"


def test_a_users_method_and_sweep_run_from_an_empty_folder(tmp_path, shared_cache):
    conf, work = user_conf(tmp_path / "mine"), tmp_path / "empty"
    work.mkdir()
    proc = prefbench("sweep", "sweep=my_study", f"hydra.searchpath=[file://{conf}]", f"cache_dir={shared_cache}",
                     *SMOKE, cwd=work)
    assert "All 2 jobs done" in proc.stdout, proc.stdout + proc.stderr
    summaries = [json.loads(p.read_text()) for p in (work / "results" / "my_study").rglob("summary.json")]
    assert sorted(s["method"] for s in summaries) == ["dpo", "sft"]
    assert [s["method/beta"] for s in summaries if s["method"] == "dpo"] == [0.5]
    assert (work / "results" / "my_study" / "report" / "index.html").exists()


def test_a_search_path_entry_names_a_folder_or_an_importable_package(tmp_path, monkeypatch):
    package = tmp_path / "site" / "mypkg"
    user_conf(package)
    (package / "__init__.py").write_text("")
    (package / "conf" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert config_root("[pkg://mypkg.conf]") == package / "conf"
    assert config_root(f"file://{package / 'conf'}") == package / "conf"
    check_overrides(["method=my_loss", "sweep=my_study", "hydra.searchpath=[pkg://mypkg.conf]"])
    with pytest.raises(UserError, match="method='my_loss' is unknown"):
        check_overrides(["method=my_loss"])
    with pytest.raises(UserError, match="pkg://nopkg.conf names a package that cannot be imported"):
        check_overrides(["method=my_loss", "hydra.searchpath=[pkg://nopkg.conf]"])
