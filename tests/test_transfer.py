"""What travels across tasks and sizes: Kendall's W and tau on hand-computed rankings, and the inversions and
conclusions named from ranking verdicts (prefbench/report/transfer.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prefbench.report.transfer import _without_task, concordance, kendall_w, tau_with_ci, travel_sentences


def test_kendalls_w_on_hand_computed_rankings():
    """Three raters of three items: rank sums 4, 6, 8 around 6, S = 8, W = 12 * 8 / (9 * 24) = 4/9."""
    assert kendall_w(np.array([[1, 2, 3], [1, 3, 2], [2, 1, 3]], float)) == pytest.approx(4 / 9)
    assert kendall_w(np.array([[1, 2, 3, 4]] * 5, float)) == pytest.approx(1.0)
    assert kendall_w(np.array([[1, 2, 3], [3, 2, 1]], float)) == pytest.approx(0.0)
    # ties: rater 1 ties items 1 and 2 (ranks 1.5, 1.5, 3): sums 2.5, 3.5, 6 around 4, S = 2.25 + 0.25 + 4 = 6.5;
    # denominator 4 * 24 - 2 * (2^3 - 2) = 84
    assert kendall_w(np.array([[1.5, 1.5, 3], [1, 2, 3]])) == pytest.approx(12 * 6.5 / 84)


def test_the_permutation_p_value_tells_agreement_from_chance():
    rng = np.random.default_rng(0)
    alike = np.array([[0.8, 0.7, 0.6, 0.5, 0.4, 0.3]] * 4) + rng.normal(0, 0.001, (4, 6))
    w, p = concordance(alike, n_perm=500)
    assert w == pytest.approx(1.0) and p < 0.01
    w, p = concordance(rng.normal(size=(4, 6)), n_perm=500)
    assert w < 0.5 and p > 0.05


def test_tau_between_cells_with_a_seed_bootstrap_interval():
    a = {"dpo": np.array([0.7, 0.72]), "ipo": np.array([0.6, 0.61]), "kto": np.array([0.5, 0.52]),
         "orpo": np.array([0.4, 0.42])}
    same = tau_with_ci(a, a)
    assert same["tau"] == 1.0 and same["ci_low"] == same["ci_high"] == 1.0 and same["n_methods"] == 4
    reversed_ = tau_with_ci(a, {k: -v for k, v in a.items()})
    assert reversed_["tau"] == -1.0
    noisy = tau_with_ci(a, {"dpo": np.array([0.1, 0.9]), "ipo": np.array([0.6, 0.6]), "kto": np.array([0.5, 0.5]),
                            "orpo": np.array([0.4, 0.4])})
    assert noisy["ci_low"] < noisy["tau"] <= noisy["ci_high"] and noisy["ci_low"] < 0.5
    assert tau_with_ci({"a": a["dpo"], "b": a["ipo"]}, {"a": a["dpo"], "b": a["ipo"]})["tau"] is None


def summary(rows):
    return pd.DataFrame(rows, columns=["series", "model", "mean", "ci_low", "ci_high"])


def pairs(rows):
    return pd.DataFrame(rows, columns=["a", "b", "model", "diff_low", "diff_high"])


def test_inversions_and_conclusions_that_hold_everywhere_are_named():
    """dpo > ipo on reviews (in the table in both orders) but ipo > dpo on arithmetic: an inversion. kto > orpo on both tasks: holds on every
    task. dpo above SFT on both; ipo above on reviews only."""
    summaries = {
        "reviews": summary([("dpo", "tiny-xs", .7, .6, .8), ("ipo", "tiny-xs", .6, .55, .65),
                            ("kto", "tiny-xs", .6, .52, .7), ("orpo", "tiny-xs", .5, .45, .55),
                            ("sft", "tiny-xs", .5, .45, .55)]),
        "arithmetic": summary([("dpo", "tiny-xs", .6, .55, .65), ("ipo", "tiny-xs", .6, .45, .75),
                               ("kto", "tiny-xs", .6, .52, .7), ("orpo", "tiny-xs", .5, .45, .55),
                               ("sft", "tiny-xs", .5, .45, .55)])}
    verdict_rows = {
        "reviews": pairs([("dpo", "ipo", "tiny-xs", .01, .2), ("ipo", "dpo", "tiny-xs", -.2, -.01),
                          ("kto", "orpo", "tiny-xs", .02, .2),
                          ("dpo", "sft", "tiny-xs", .1, .3)]),
        "arithmetic": pairs([("ipo", "dpo", "tiny-xs", .01, .1), ("orpo", "kto", "tiny-xs", -.2, -.01),
                             ("dpo", "kto", "tiny-xs", -.1, .1)])}
    words = travel_sentences(summaries, verdict_rows)
    assert words[0] == "Inversion: DPO > IPO on reviews/tiny-xs, but IPO > DPO on arithmetic/tiny-xs."
    assert "KTO > ORPO on every task and size (of 2 with both)." in words
    assert "DPO > SFT on every task and size (2)." in words
    assert "IPO > SFT on reviews/tiny-xs; not distinguishable from SFT on the other 1." in words
    assert not any("SFT >" in w or "> SFT on arithmetic" in w and w.startswith("ORPO") for w in words)
    assert len(words) == 5  # the inversion, KTO > ORPO, and DPO, IPO, KTO against SFT


def test_a_series_loses_only_the_task_from_its_name():
    assert _without_task("dpo [task.name=arithmetic]") == "dpo"
    assert _without_task("dpo [task.name=arithmetic,method.beta=0.1]") == "dpo [method.beta=0.1]"
    assert _without_task("dpo") == "dpo"
