"""Fair budgets: every method gets the same optimizer steps from the base model (budget=matched), cost
totals include the init stage, one base model serves every seed, and `strength` means the same for all."""
import json

import pytest

from prefbench.job.config import compose_config
from prefbench.io.errors import UserError
from prefbench.job.config import validate
from prefbench.job.pipeline import flop_matched_steps, offline_flops, planned_steps, prepare
from prefbench.model.compute import training_cost
from tests.conftest import SMOKE, prefbench


def test_training_cost_adds_the_init_stage():
    run = {"train_tokens": 1000, "optimizer_steps": 4, "train_cpu_seconds": 2.0}
    stage = {"train_tokens": 300, "optimizer_steps": 6, "train_cpu_seconds": 1.5}
    cost = training_cost(10, run, stage)
    assert cost["cost/train_flops"] == 6 * 10 * 1000 and cost["cost/total_train_flops"] == 6 * 10 * 1300
    assert (cost["cost/optimizer_steps"], cost["cost/total_optimizer_steps"]) == (4, 10)
    assert cost["cost/total_train_cpu_seconds"] == 3.5 and cost["cost/total_train_tokens"] == 1300
    assert training_cost(10, run, None)["cost/total_train_flops"] == 6 * 10 * 1000


def test_matched_budget_gives_equal_steps_from_base(tmp_path, shared_cache):
    """SMOKE: SFT stage 6 steps, trainer 4 steps. DPO trains 4 from the SFT stage (10 from base); with
    budget=matched SFT and ORPO train 10 from base, with per_stage 4. One multirun over both budgets."""
    prefbench("sweep", "method=sft,dpo,orpo", "budget=matched,per_stage", f"results_dir={tmp_path}", "sweep_name=b",
              f"cache_dir={shared_cache}", *SMOKE)
    for budget, orpo_steps in (("matched", 10), ("per_stage", 4)):
        runs = {json.loads((p / "summary.json").read_text())["method"]: json.loads((p / "summary.json").read_text())
                for p in (tmp_path / "b").glob("reviews-tiny-xs-*") if f"budget: {budget}\n" in (p / "config.yaml").read_text()}
        assert {r["method"] for r in runs.values()} == {"sft", "dpo", "orpo"}
        assert runs["dpo"]["cost/optimizer_steps"] == 4 and runs["dpo"]["cost/total_optimizer_steps"] == 10
        assert runs["dpo"]["cost/total_train_flops"] > runs["dpo"]["cost/train_flops"]
        for m in ("sft", "orpo"):
            assert runs[m]["cost/optimizer_steps"] == runs[m]["cost/total_optimizer_steps"] == orpo_steps, budget
            assert runs[m]["train/step"] == orpo_steps
        assert all(r["cost/train_cpu_seconds"] > 0 and r["cost/eval_cpu_seconds"] > 0 for r in runs.values())


def test_matched_budget_needs_one_unit():
    cfg = compose_config(["trainer.epochs=1"])
    with pytest.raises(UserError, match="both count steps or both count epochs"):
        validate(cfg)
    validate(compose_config(["trainer.epochs=1", "stages.sft.epochs=1"]))
    validate(compose_config(["trainer.epochs=1", "budget=per_stage"]))
    with pytest.raises(UserError, match="budget='equal' is not allowed"):
        validate(compose_config(["budget=equal"]))


def test_one_base_model_for_every_seed(tmp_path):
    args = [f"cache_dir={tmp_path}", *SMOKE]
    g0, g1 = (prepare(compose_config(args + [f"seed={s}"])) for s in (0, 1))
    assert g0.base == g1.base and g0.sft_stage() != g1.sft_stage()
    per_seed = prepare(compose_config(args + ["seed=1", "stages.base.seed=${seed}"]))
    assert per_seed.base != g0.base


def test_strength_is_the_pull_towards_the_anchor_for_every_method():
    """A larger strength regularises more: DPO/IPO/KTO's beta grows, ORPO's lambda (its preference weight) shrinks."""
    from prefbench.job.config import method_from_config

    def ratio(method, key):
        one, two = (getattr(method_from_config(cfg.method, cfg.strength), key) for cfg in
                    (compose_config([f"method={method}", f"strength={s}"]) for s in (1, 2)))
        return two / one
    assert ratio("dpo", "beta") == ratio("ipo", "beta") == ratio("kto", "beta") == 2
    assert ratio("orpo", "lam") == 0.5


def test_matched_flops_gives_online_runs_the_offline_runs_flops():
    """Pairs of 3 prompt + 5 chosen + 3 prompt + 2 rejected tokens: DPO trains 13 tokens a pair, 6N each, for 120
    steps of 8 pairs. A PPO step trains, samples and reference-scores 8 x 4 samples of about 3 + 5 tokens
    (6N + 2N + 2N a token): floor(120 * 6 * 13 / (4 * 10 * 8)) = 29 steps; online DPO samples 2: 58. With 4 updates
    per rollout a step costs 6N + 4N / 4: floor(120 * 6 * 13 / (4 * 7 * 8)) = 41."""
    from datasets import Dataset

    from prefbench.data.prepare import TokenizedData
    from prefbench.methods import build_method

    train = Dataset.from_dict({"prompt_ids": [[1, 2, 3]] * 10, "chosen_ids": [[4, 5, 6, 7, 8]] * 10,
                               "rejected_ids": [[9, 10]] * 10})
    data = TokenizedData("paired", train, train, train)
    cfg = compose_config(["budget=matched_flops", "trainer.steps=120", "trainer.batch_size=8"])
    assert offline_flops(cfg, data, n_params=10) == 6 * 10 * 120 * 8 * 13
    assert flop_matched_steps(cfg, build_method("ppo"), data) == 29
    assert flop_matched_steps(cfg, build_method("online_dpo"), data) == 58
    assert flop_matched_steps(cfg, build_method("ppo", updates_per_rollout=4), data) == 41
    assert planned_steps(compose_config(["budget=matched_flops", "method=ppo"])) is None  # follows from the data
    assert planned_steps(compose_config(["budget=matched_flops", "method=orpo"])) == 240  # offline: as matched
    with pytest.raises(UserError, match="unpaired"):
        offline_flops(cfg, TokenizedData("unpaired", train, train, train), 10)
    with pytest.raises(UserError, match="trainer.steps counts them"):
        validate(compose_config(["budget=matched_flops", "trainer.epochs=1", "stages.sft.epochs=1"]))


def test_an_online_run_under_matched_flops_spends_about_the_offline_runs_flops(tmp_path, shared_cache):
    spent = {}
    for budget in ("matched", "matched_flops"):
        prefbench("run", "method=grpo", f"budget={budget}", f"results_dir={tmp_path / budget}",
                  f"cache_dir={shared_cache}", *SMOKE)
        [path] = (tmp_path / budget).rglob("summary.json")
        spent[budget] = json.loads(path.read_text())
    assert spent["matched"]["cost/optimizer_steps"] == 4 > spent["matched_flops"]["cost/optimizer_steps"] >= 1
    assert spent["matched"]["cost/flops_vs_offline"] > 2 * spent["matched_flops"]["cost/flops_vs_offline"]
    assert 0.3 < spent["matched_flops"]["cost/flops_vs_offline"] < 2
