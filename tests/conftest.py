import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# The smallest end-to-end setting: a ~0.16M-parameter model, a few steps of everything.
SMOKE = ["model=tiny-xs", "task.n_pairs=160", "task.corpus_size=200", "task.eval_size=8", "stages.base.steps=15",
         "stages.sft.steps=6", "trainer.steps=4", "trainer.log_every=2", "trainer.checkpoint_every=2",
         "trainer.progress=false", "eval.samples_per_prompt=2", "eval.diversity=false", "eval.bootstrap=50",
         "eval.best_of_n=4"]


def prefbench(*args, cwd=None, check=True, timeout=600, env=None):
    """Run the real `prefbench` console script; returns the CompletedProcess."""
    exe = Path(sys.executable).parent / "prefbench"
    proc = subprocess.run([str(exe), *map(str, args)], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"prefbench {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def install_package(tmp_path: Path, package: str, source: str, entry_points: str) -> dict:
    """A third-party package (one module) with entry points, importable by a subprocess; returns its env."""
    import textwrap

    site = tmp_path / "site"
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(textwrap.dedent(source))
    dist = site / f"{package}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def run_dir(parent: Path, prefix: str) -> Path:
    """The one run folder in ``parent`` named ``prefix`` plus its overrides and config digest."""
    found = [p for p in Path(parent).glob(f"{prefix}*") if p.is_dir() and p.name[len(prefix):][:1] in (",", "-")]
    assert len(found) == 1, (prefix, sorted(p.name for p in Path(parent).iterdir()))
    return found[0]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One stage cache for the whole session, so tokenizer/base/SFT stages are built once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
