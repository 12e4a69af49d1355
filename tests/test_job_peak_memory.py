"""Peak memory is each job's own: a launcher worker that runs several jobs in one process
must not report, for a later job, memory that an earlier job (or anything before it) held."""
import resource
import sys

import pytest
import torch

from prefbench.job.config import compose_config
from prefbench.job.run import run_job
from tests.conftest import SMOKE


@pytest.mark.skipif(not sys.platform.startswith("linux") or torch.cuda.is_available(),
                    reason="the CPU measurement through /proc/self (CUDA has its own peak counters)")
def test_jobs_in_one_process_do_not_inherit_its_peak(tmp_path, shared_cache):
    common = [f"results_dir={tmp_path}", f"cache_dir={shared_cache}", *SMOKE]
    held = torch.ones(2**28)  # 1 GiB, written, as a heavy earlier job of this worker would have held
    del held
    lifetime_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    assert lifetime_mb > 1024
    for method in ("sft", "orpo"):  # two jobs in this one process, as in a reused joblib worker
        summary = run_job(compose_config([f"method={method}", *common]), tmp_path / "runs" / method)
        assert summary["status"] == "done", summary["error"]
        assert 50 < summary["cost/peak_memory_mb"] < lifetime_mb - 512
        assert summary["cost/peak_memory_how"] == "rss_peak_since_job_start"
