"""Multi-process training is real or refused (prefbench.train.distributed): two gloo processes at batch B/2 give
the losses, metrics, gradients and parameters of one process at batch B, for methods of sums, of per-token
statistics (WPO, LD-DPO) and online ones (GRPO, RLOO, PPO with a reused rollout and its value head: judge
scores, pi_old and values gathered), with the reference cache and metrics written once; launches that cannot
be honoured stop with one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from tests.conftest import REPO, SMOKE

WORKER = REPO / "tests" / "distributed_worker.py"
METHODS = ["sft", "dpo", "ipo", "kto", "orpo", "wpo", "ld_dpo", "grpo", "rloo", "ppo"]  # per-token, online too
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
BIN = Path(sys.executable).parent


def launch(*cmd, timeout=180) -> subprocess.CompletedProcess:
    """Run a launcher; on timeout kill it with every process it started (a hung collective blocks them all)."""
    proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # torchrun puts its workers in sessions of their own: kill each
        for child in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            child.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def torchrun(*args) -> subprocess.CompletedProcess:
    return launch(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 2, *args)


def errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("prefbench: error:")]


def test_two_processes_at_half_batch_equal_one_process_at_full_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    proc = launch(sys.executable, WORKER, one, *METHODS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = torchrun(WORKER, two, *METHODS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for method in METHODS:
        a, b = one / method, two / method
        rows_a, rows_b = ([json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (a, b))
        assert [r["step"] for r in rows_b] == [1, 2, 3], "metrics.jsonl written once, one line per step"
        for ra, rb in zip(rows_a, rows_b):  # the loss and every metric are those of the global batch
            assert set(ra) == set(rb)
            for key in set(ra) - {"tokens_per_s"}:
                assert rb[key] == pytest.approx(ra[key], abs=1e-5), (method, ra["step"], key)
        ta, tb = torch.load(a / "tensors.pt"), torch.load(b / "tensors.pt")
        for name in ("grads", "params"):  # gradients of step 1 (after DDP's average), parameters after step 3
            assert len(ta[name]) == len(tb[name]) > 0
            for x, y in zip(ta[name], tb[name]):
                torch.testing.assert_close(y, x, rtol=0, atol=1e-5)
        seen = [json.loads((b / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert [s["world"] for s in seen] == [2, 2]
        assert seen[0]["train_tokens"] == json.loads((a / "rank0.json").read_text())["train_tokens"]
        if "reference_cache_hit" in seen[0]:  # one rank computed and wrote it, the other read it
            assert sorted(s["reference_cache_hit"] for s in seen) == [False, True]
        assert (b / "checkpoint" / "model.safetensors").exists()
    assert max(r["kto/kl"] for r in map(json.loads, (two / "kto" / "metrics.jsonl").read_text().splitlines())) > 0


def test_accelerate_cpu_launch_of_two_processes_stops_with_one_line(tmp_path):
    """accelerate 1.x's `--cpu` launcher starts one process for --num_processes 2: refused, not run alone."""
    proc = launch(BIN / "accelerate", "launch", "--num_processes", 2, "--cpu", WORKER, tmp_path, "sft")
    assert proc.returncode != 0
    [line] = errors(proc)
    assert "starts only one process" in line and "torchrun --nproc_per_node N" in line
    assert not (tmp_path / "sft" / "metrics.jsonl").exists()


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_prefbench_run_under_two_processes_stops_with_one_line(launcher, tmp_path):
    """A whole job (stages, caches, evaluation) is not multi-process: `prefbench run` refuses, rank 0 says
    why once, and no run folder is started. Needs prefbench.train.distributed.refuse_multiprocess in prefbench.cli.main."""
    args = ["-m", "prefbench.cli", "run", f"results_dir={tmp_path}", *SMOKE]
    if launcher == "torchrun":
        proc = torchrun(*args)
    else:
        proc = launch(BIN / "accelerate", "launch", "--num_processes", 2, "--cpu", *args)
    assert proc.returncode != 0
    [line] = errors(proc)
    assert "`prefbench run` runs as one process" in line and "torchrun --nproc_per_node N" in line
    assert not any(tmp_path.rglob("summary.json"))


def test_only_rank_0_fails_a_refused_launch(monkeypatch, capsys):
    """torchrun stops every worker once one fails: a failing rank 1 could kill rank 0 before it printed why
    (CI saw no line). Rank 1 leaves with status 0 and says nothing; rank 0 raises the one line."""
    from prefbench.io.errors import UserError
    from prefbench.train.distributed import refuse_multiprocess

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as stop:
        refuse_multiprocess("run")
    assert stop.value.code == 0 and capsys.readouterr() == ("", "")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="runs as one process"):
        refuse_multiprocess("run")
