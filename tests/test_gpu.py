"""The GPU paths, on a GPU: packed attention under CUDA sdpa, bf16 autocast training, CUDA peak memory, a whole job
and `prefbench perf device=cuda` with MFU. Marked ``gpu``: skipped where torch sees no CUDA device (tests/conftest.py);
`python -m pytest -m gpu` runs only these."""
import json

import pytest
import torch
import transformers

from prefbench.data.views import pad_batch
from prefbench.model.logprobs import sequence_logps
from prefbench.model.packing import packed_attention
from tests.conftest import SMOKE, prefbench
from tests.test_packing import FAMILIES, VIEW

pytestmark = pytest.mark.gpu


def make(family: str, device: str):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(FAMILIES[family](), attn_implementation="sdpa").to(device)


def logps(model, packed: bool, dtype) -> torch.Tensor:
    batch = pad_batch(VIEW, [0, 1, 2], ("chosen", "rejected"), 0).to(model.device)
    with packed_attention(model, enabled=packed), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        s = sequence_logps(model, batch)
    return torch.cat([s["chosen"].sum, s["rejected"].sum]).float().cpu()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox"])
def test_packed_logps_on_cuda_equal_padded_and_cpu(family):
    cpu = logps(make(family, "cpu").eval(), False, torch.float32)
    model = make(family, "cuda").eval()
    for packed in (True, False):  # fp32 on the GPU: the CPU's numbers; bf16 autocast: close to them
        torch.testing.assert_close(logps(model, packed, torch.float32), cpu, rtol=0, atol=1e-4)
        torch.testing.assert_close(logps(model, packed, torch.bfloat16), cpu, rtol=0.05, atol=0.2)


def test_a_job_trains_in_bf16_on_the_gpu_and_counts_cuda_memory(tmp_path):
    proc = prefbench("run", "method=dpo", f"results_dir={tmp_path}", *SMOKE)
    [summary_path] = tmp_path.rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "done", proc.stderr[-2000:]
    assert summary["cost/peak_memory_how"] == "cuda_max_allocated" and summary["cost/peak_memory_mb"] > 0
    assert summary["cost/mixed_precision"] == "bf16"
    rows = [json.loads(line) for line in (summary_path.parent / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in rows if "loss" in r)


def test_perf_on_cuda_reports_mfu_and_the_driver(tmp_path):
    out = prefbench("perf", "device=cuda", "methods=[sft,dpo]", "steps=3", "reps=1", "batch_size=4", "hidden=128",
                    "layers=2", "vocab=1024", f"out={tmp_path}").stdout
    saved = json.loads(next(tmp_path.glob("perf-*.json")).read_text())
    env = saved["environment"]
    assert env["cuda"] and env["driver"] and env["bf16"] and env["device"] in out
    if env["peak_tflops"]:  # a GPU in prefbench.perf.measure.PEAK_BF16_TFLOPS
        assert "MFU (6 N tokens/s" in out
        for row in saved["table"]:
            assert 0 < row["prefbench_mfu"] < 1 and 0 < row["trl_mfu"] < 1
