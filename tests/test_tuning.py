"""The tuning protocol's selection rule (prefbench/report/tuning.py) on a runs table with a known answer."""
import pandas as pd
import pytest

from prefbench.io.errors import UserError
from prefbench.report.tuning import KL_BOUND, tuning_table


def runs(rows):
    cols = ["model", "method", "config.trainer.lr", "config.strength", "seed", "eval/score_mean", "eval/kl"]
    df = pd.DataFrame(rows, columns=cols)
    return df.assign(status="done", **{"config.eval.split": "val"})


def test_best_validation_score_under_the_kl_bound():
    df = runs([
        # dpo: the best score (2.0) is over the KL bound on average, so the next best (1.5) is chosen
        ("tiny-xs", "dpo", 1e-3, 1.0, 0, 2.0, KL_BOUND + 5), ("tiny-xs", "dpo", 1e-3, 1.0, 1, 2.0, KL_BOUND - 1),
        ("tiny-xs", "dpo", 5e-4, 1.0, 0, 1.4, 3.0), ("tiny-xs", "dpo", 5e-4, 1.0, 1, 1.6, 5.0),
        ("tiny-xs", "dpo", 5e-4, 2.0, 0, 1.0, 1.0), ("tiny-xs", "dpo", 5e-4, 2.0, 1, 1.0, 1.0),
        # orpo: equal scores go to the larger strength, then the smaller lr
        ("tiny-xs", "orpo", 5e-4, 1.0, 0, 1.0, 2.0), ("tiny-xs", "orpo", 5e-4, 2.0, 0, 1.0, 2.0),
        ("tiny-xs", "orpo", 2.5e-4, 2.0, 0, 1.0, 2.0),
        # kto: nothing under the bound, nothing chosen
        ("tiny-xs", "kto", 5e-4, 1.0, 0, 3.0, KL_BOUND + 1),
    ])
    table = tuning_table(df)
    chosen = table[table["chosen"]].set_index("method")
    assert set(chosen.index) == {"dpo", "orpo"}
    assert (chosen.loc["dpo", "config.trainer.lr"], chosen.loc["dpo", "config.strength"]) == (5e-4, 1.0)
    assert chosen.loc["dpo", "val_score"] == pytest.approx(1.5) and chosen.loc["dpo", "kl"] == pytest.approx(4.0)
    assert (chosen.loc["orpo", "config.trainer.lr"], chosen.loc["orpo", "config.strength"]) == (2.5e-4, 2.0)
    assert table.loc[table["method"] == "dpo", "seeds"].tolist() == [2, 2, 2]


def test_only_runs_judged_on_the_validation_prompts():
    df = runs([("tiny-xs", "dpo", 1e-3, 1.0, 0, 1.0, 1.0)]).assign(**{"config.eval.split": "eval"})
    with pytest.raises(UserError, match="validation prompts"):
        tuning_table(df)


def test_tuned_values_apply_per_model_size_and_strength_still_scales_them():
    from omegaconf import open_dict

    from prefbench.job.config import compose_config
    from prefbench.job.config import method_from_config

    def config(*overrides):
        cfg = compose_config(["method=dpo", *overrides])
        with open_dict(cfg):
            cfg.method.tuned = {"tiny-xs": {"lr": 0.001, "beta": 0.05}}
        return cfg

    xs = config("model=tiny-xs")
    assert xs.trainer.lr == 0.001 and xs.method.beta == 0.05
    assert method_from_config(xs.method).beta == 0.05  # the table itself is not passed to the method
    s = config("model=tiny-s", "strength=2")
    assert s.trainer.lr == 5e-4 and method_from_config(s.method, s.strength).beta == 0.2  # tiny-s: the defaults
    assert method_from_config(config("model=tiny-xs", "strength=2").method, 2).beta == 0.1
