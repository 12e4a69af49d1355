"""Evaluation along training and best-of-n (prefbench/eval/curve.py): every run is a curve, the curve changes
no trained weight, and the best-of-n baseline has the analytic KL and the order-statistic score."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from prefbench.job.config import compose_config
from prefbench.eval.frontier import bon_kl
from prefbench.io.errors import UserError
from prefbench.job.config import validate
from tests.conftest import SMOKE, prefbench, run_dir

ARGS = ["run", "method=dpo", *(a for a in SMOKE if not a.startswith("trainer.steps=")), "trainer.steps=8",
        "eval.best_of_n=8", "eval.curve.fractions=[0,0.125,0.25,0.5]"]  # curve at steps 0, 1, 2, 4


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_cache):
    out = {}
    for name, extra in (("curve", []), ("plain", ["eval.curve.fractions=[]", "eval.best_of_n=0"])):
        results = tmp_path_factory.mktemp(name)
        prefbench(*ARGS, *extra, f"results_dir={results}", f"cache_dir={shared_cache}")
        out[name] = run_dir(results / "runs", "reviews-tiny-xs-dpo-s0")
    return out


def test_a_run_is_a_curve_ending_at_its_full_evaluation(runs):
    run = runs["curve"]
    curve, summary = rows(run / "curve.jsonl"), json.loads((run / "summary.json").read_text())
    assert [r["step"] for r in curve] == [0, 1, 2, 4, 8]
    assert summary["eval/curve_points"] == 5 and summary["cost/curve_sample_seconds"] > 0
    assert curve[0]["kl"] == 0.0  # step 0 of a DPO run is the SFT stage: the anchor itself
    last = curve[-1]
    assert last["kl"] == pytest.approx(summary["eval/kl"], abs=1e-9)
    assert last["score_mean"] == pytest.approx(summary["eval/score_mean"], abs=1e-9)
    assert last["win_rate_vs_sft"] == pytest.approx(summary["eval/win_rate_vs_sft"], abs=1e-9)
    k = summary["eval/samples_per_prompt"]  # the LC GLM sees every (policy, anchor) pair of every prompt
    assert summary["eval/lc_pairs"] == summary["eval/n_prompts"] * k * k and 0 < summary["eval/lc_win_rate_vs_sft"] < 1
    for r in curve:
        assert r["kl_ci_low"] <= r["kl"] <= r["kl_ci_high"] and 0 <= r["win_rate_vs_sft"] <= 1
        assert r["response_tokens_mean"] > 0


def test_the_curve_changes_no_trained_weight_and_no_final_number(runs):
    curve, plain = (json.loads((runs[k] / "summary.json").read_text()) for k in ("curve", "plain"))
    same = [k for k in plain if k.startswith(("train/", "eval/")) and not k.startswith(("eval/curve", "eval/best"))
            and k != "train/tokens_per_s"]
    assert len(same) > 15
    assert {k: curve[k] for k in same} == {k: plain[k] for k in same}
    a, b = (load_file(runs[k] / "checkpoint" / "model.safetensors") for k in ("curve", "plain"))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert not (runs["plain"] / "curve").exists() and rows(runs["plain"] / "curve.jsonl")[-1]["step"] == 8


def test_best_of_n_has_the_analytic_kl_and_improves_on_the_anchor(runs):
    bon = rows(runs["curve"] / "best_of_n.jsonl")
    assert [r["n"] for r in bon] == [1, 2, 4, 8]
    for r in bon:
        assert r["kl"] == pytest.approx(math.log(r["n"]) - (r["n"] - 1) / r["n"])
        assert r["kl"] == pytest.approx(bon_kl(r["n"]))
    scores = [r["score_mean"] for r in bon]
    assert scores == sorted(scores) and scores[-1] > scores[0]  # the expected max of more samples never falls
    assert abs(bon[0]["win_rate_vs_sft"] - 0.5) < 0.2  # n = 1 is an anchor sample against anchor samples


def test_curve_settings_are_validated():
    for bad, words in (("eval.curve.fractions=[1.0]", "eval.curve.fractions"),
                       ("eval.curve.fractions=[x]", "eval.curve.fractions"),
                       ("eval.curve.samples_per_prompt=0", "eval.curve.samples_per_prompt"),
                       ("eval.best_of_n=-1", "eval.best_of_n")):
        with pytest.raises(UserError, match=words.replace(".", r"\.")):
            validate(compose_config([*SMOKE, bad]))
    validate(compose_config([*SMOKE, "eval.curve.fractions=[]", "eval.best_of_n=0"]))


def test_a_proxy_judge_on_a_builtin_task_also_records_the_gold_score(tmp_path, shared_cache):
    """judge=bt (a reward model trained in the suite): every sample, curve point and best-of-n row carries the
    gold score beside the proxy's, and best-of-n picks by the proxy (Gao et al. 2022, Fig. 1)."""
    from prefbench.report.build import build_report, load_runs
    from prefbench.report.frontier_tables import gold_peaks, load_curves

    prefbench("sweep", "method=dpo", "judge=bt", "judge.train.steps=20", "hydra.launcher.n_jobs=1",
              f"results_dir={tmp_path}", "sweep_name=proxy", f"cache_dir={shared_cache}", *ARGS[2:])
    run = run_dir(tmp_path / "proxy", "reviews-tiny-xs-dpo-s0")
    samples, curve, bon = (rows(run / f) for f in ("samples.jsonl", "curve.jsonl", "best_of_n.jsonl"))
    assert all("gold_score" in s and "score" in s for s in samples)
    assert any(s["gold_score"] != s["score"] for s in samples)  # two judges, not one twice
    assert all(r["gold_score_mean"] is not None for r in curve + bon)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval/judge"] == "bt" and summary["eval/gold_score_mean"] == pytest.approx(
        sum(s["gold_score"] for s in samples) / len(samples))
    df = load_runs(tmp_path / "proxy")
    peaks = gold_peaks(load_curves(df))
    assert list(peaks["series"]) == ["dpo"] and peaks["peak_step"].iloc[0] in [r["step"] for r in curve]
    end = peaks.iloc[0]  # the end's CI is over the final samples' prompts (one seed), around their mean
    assert end["gold_end_ci_low"] < summary["eval/gold_score_mean"] < end["gold_end_ci_high"]
    build_report(tmp_path / "proxy")
    assert (tmp_path / "proxy" / "report" / "proxy_gold.png").exists()
    assert "Proxy vs gold" in (tmp_path / "proxy" / "report" / "index.html").read_text()
