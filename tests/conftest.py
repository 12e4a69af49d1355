import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import atexit  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
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
    """Run `prefbench ARGS` in a process of its own; returns the CompletedProcess.

    The process is forked from a server that has imported prefbench's modules once (torch, transformers and
    accelerate take ~10 s of CPU to import, and the suite runs ~70 commands), and runs the console script's
    own function, ``prefbench.cli.main``, with this process's environment, in ``cwd``, with its output in files.
    An ``env`` beyond the fault hook (a plugin's PYTHONPATH, a tracker's variables, both read when a package
    is imported) runs the installed console script itself in a new interpreter."""
    argv, extra = [str(a) for a in args], {k: v for k, v in (env or {}).items() if k != "PREFBENCH_KILL_AT"}
    if extra:
        proc = subprocess.run([str(Path(sys.executable).parent / "prefbench"), *argv], cwd=cwd or REPO,
                              capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})
    else:
        proc = _forked(argv, Path(cwd or REPO), {**os.environ, **(env or {})}, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"prefbench {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


_PRELOAD = ["prefbench.cli", "prefbench.job.run", "prefbench.job.sweep", "prefbench.report.build"]


def _main_in_child(argv: list[str], cwd: str, env: dict, out: str, err: str) -> None:
    """The console script in a forked child: its environment and folder, stdout and stderr in files."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [str(Path(sys.executable).parent / "prefbench"), *argv]
    from prefbench.cli import main

    try:
        code = main(argv)
    finally:  # the interpreter's exit, which a multiprocessing child skips: threading's exit hooks (joblib's
        threading._shutdown()  # loky pool stops its workers there; without it the child waits out their 300 s
        atexit._run_exitfuncs()  # idle timeout), then atexit's
    sys.exit(code)


def _forked(argv: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    import multiprocessing
    import tempfile

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = f"{tmp}/stdout", f"{tmp}/stderr"
        child = ctx.Process(target=_main_in_child, args=(argv, str(cwd), env, out, err))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["prefbench", *argv], timeout)
        return subprocess.CompletedProcess(["prefbench", *argv], child.exitcode, Path(out).read_text(),
                                           Path(err).read_text())


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


FAULTS = '''
from dataclasses import dataclass

import torch

from prefbench.methods import LossOutput, Method


class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


@dataclass
class NanLoss(Method):
    """Training meets a non-finite loss at its first step."""
    name = "nan_loss"
    view = "paired"
    needs_reference = False
    init = "sft"

    def loss(self, policy, reference):
        return LossOutput((policy.chosen.mean * float("nan")).mean())


@dataclass
class NanGradient(Method):
    """A finite loss (the SFT loss) whose gradient is NaN."""
    name = "nan_grad"
    view = "paired"
    needs_reference = False
    init = "sft"

    def loss(self, policy, reference):
        return LossOutput(-_NanGradient.apply(policy.chosen.mean).mean())
'''


def install_faults(tmp_path: Path) -> tuple[dict, str]:
    """Methods that fail on purpose (``nan_loss``, ``nan_grad``) as an installed plugin, with their yamls;
    returns its env and the ``hydra.searchpath`` override that finds the yamls."""
    env = install_package(tmp_path, "faults", FAULTS, "[prefbench.methods]\nnan_loss = faults:NanLoss\n"
                                                       "nan_grad = faults:NanGradient\n")
    conf = tmp_path / "faults_conf" / "method"
    conf.mkdir(parents=True)
    for name in ("nan_loss", "nan_grad"):
        (conf / f"{name}.yaml").write_text(f"name: {name}\n")
    return env, f"hydra.searchpath=[file://{conf.parent}]"


def run_dir(parent: Path, prefix: str) -> Path:
    """The one run folder in ``parent`` named ``prefix`` plus its overrides and config digest."""
    found = [p for p in Path(parent).glob(f"{prefix}*") if p.is_dir() and p.name[len(prefix):][:1] in (",", "-")]
    assert len(found) == 1, (prefix, sorted(p.name for p in Path(parent).iterdir()))
    return found[0]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped, with the reason, where torch sees none."""
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)"))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One stage cache for the whole session, so tokenizer/base/SFT stages are built once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
