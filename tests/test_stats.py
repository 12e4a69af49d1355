"""The report's statistics: the two-stage bootstrap against exactly enumerated cases, paired comparisons,
rank ranges, collapse marks, and the report's words on a synthetic sweep with known ties and differences."""
import itertools
import json

import numpy as np
import pandas as pd
import pytest

from prefbench.report import stats
from prefbench.report.build import build_report, load_runs
from prefbench.report.tables import PROMPTS_ONLY, SEED_ONLY, pairwise, series_summary


def exact_two_stage(per_seed):
    """Every equally likely two-stage resample: seeds with replacement, then prompts within each slot."""
    n = len(per_seed)
    out = []
    for seeds in itertools.product(range(n), repeat=n):
        slots = [itertools.product(per_seed[s], repeat=len(per_seed[s])) for s in seeds]
        out += [np.mean([np.mean(p) for p in choice]) for choice in itertools.product(*slots)]
    return np.array(out)


def test_two_seeds_two_prompts_matches_the_exact_distribution():
    per_seed = [np.array([0.0, 1.0]), np.array([0.5, 1.0])]
    exact = exact_two_stage(per_seed)
    assert len(exact) == 64  # 4 seed resamples x 4 x 4 prompt resamples
    # by hand: seed means 0.5, 0.75 -> 0.625; the exact variance is 3/64
    assert exact.mean() == pytest.approx(0.625) and exact.var() == pytest.approx(3 / 64)
    boot = stats.hierarchical_bootstrap(per_seed, n_boot=200_000, seed=3)
    assert boot["mean"] == 0.625
    values = np.unique(exact)
    p_exact = np.array([(exact == v).mean() for v in values])
    p_boot = np.array([np.isclose(boot["draws"], v).mean() for v in values])
    assert np.isclose(boot["draws"][:, None], values[None]).any(axis=1).all()  # no value outside the support
    assert np.abs(p_boot - p_exact).max() < 0.004
    assert (boot["ci_low"], boot["ci_high"]) == (0.25, 1.0)  # the exact 2.5% / 97.5% quantiles
    assert np.quantile(exact, [0.025, 0.975]).tolist() == [0.25, 1.0]


def test_one_seed_is_the_prompt_bootstrap():
    values = np.array([0.0] * 5 + [1.0] * 5)  # the mean of 10 resampled prompts ~ Binomial(10, 1/2) / 10
    boot = stats.hierarchical_bootstrap([values], n_boot=50_000, seed=0)
    assert boot["mean"] == 0.5 and (boot["ci_low"], boot["ci_high"]) == (0.2, 0.8)
    assert boot["draws"].var() == pytest.approx(0.025, rel=0.03)  # p(1-p)/n


def test_mean_is_the_mean_of_seed_means_and_seed_spread_widens_the_ci():
    assert stats.hierarchical_bootstrap([np.ones(3), np.zeros(1)], n_boot=10)["mean"] == 0.5
    rng = np.random.default_rng(0)
    spread = [0.4 + 0.2 * s + 0.01 * rng.standard_normal(50) for s in range(3)]  # seeds differ, prompts agree
    seeds = stats.hierarchical_bootstrap(spread, n_boot=4000)
    prompts_only = stats.hierarchical_bootstrap([np.concatenate(spread)], n_boot=4000)
    assert seeds["ci_high"] - seeds["ci_low"] > 5 * (prompts_only["ci_high"] - prompts_only["ci_low"])
    assert np.isnan(stats.hierarchical_bootstrap([], n_boot=10)["mean"])


def test_paired_seeds_and_prompts_see_a_small_consistent_difference():
    # large seed and prompt effects shared by both series; A is B + 0.05 on every prompt of every seed
    b = {s: {p: 0.2 + 0.25 * s + 0.1 * np.sin(p) for p in range(30)} for s in range(3)}
    a = {s: {p: v + 0.05 for p, v in b[s].items()} for s in range(3)}
    paired = stats.paired_comparison(a, b, n_boot=3000)
    assert paired["prompts_paired"] and paired["n_seeds"] == 3 and paired["p_a_beats_b"] == 1.0
    assert paired["diff"] == pytest.approx(0.05) and paired["diff_low"] == pytest.approx(0.05)
    shifted = {s: {p + 100: v for p, v in a[s].items()} for s in a}  # other prompts: resampled separately
    unpaired = stats.paired_comparison(shifted, b, n_boot=3000)
    assert not unpaired["prompts_paired"] and unpaired["diff_low"] < 0.05 < unpaired["diff_high"]
    assert stats.paired_comparison(a, {7: b[0]})["n_seeds"] == 0  # no shared seed: no comparison
    table = stats.pairwise_table({"a": a, "b": b}, n_boot=500)
    ab, ba = table.iloc[0], table.iloc[1]
    assert ab["p_a_beats_b"] + ba["p_a_beats_b"] == 1 and ab["diff_low"] == -ba["diff_high"]


def test_rank_ranges_mark_ties():
    import pandas as pd

    summary = pd.DataFrame({"series": ["d", "a", "b", "c"], "mean": [0.1, 0.9, 0.6, 0.58]})
    rows = []
    for x, y in itertools.permutations("abcd", 2):
        gap = summary.set_index("series")["mean"]
        d = gap[x] - gap[y]
        tied = {x, y} == {"b", "c"}
        rows.append({"a": x, "b": y, "diff_low": -0.1 if tied else d - 0.05, "diff_high": 0.1 if tied else d + 0.05,
                     "distinguishable": not tied})
    table = stats.rank_table(summary, pd.DataFrame(rows))
    assert table[["rank", "series", "tied_with"]].values.tolist() == [
        ["1", "a", ""], ["2-3", "b", "c"], ["2-3", "c", "b"], ["4", "d", ""]]


def test_collapse_reasons():
    import pandas as pd

    df = pd.DataFrame({"eval/kl": [3.0, 15.5, 2.0, 2.0, np.nan], "eval/response_tokens_mean": [10, 10, 4.9, 21, 10],
                       "eval/anchor_response_tokens_mean": [10, 10, 10, 10, np.nan]})
    reasons = stats.collapse_reasons(df).tolist()
    assert reasons[0] == "" and reasons[4] == ""  # a missing anchor length skips the length test
    assert reasons[1] == "KL 15.5 nats > 15"
    assert reasons[2].startswith("response length 0.49x") and reasons[3].startswith("response length 2.10x")


SIZES = {"tiny-xs": 160_000, "tiny-s": 1_000_000, "tiny-m": 5_000_000}


def fake_sweep(root, prompts=True, flops=True):
    """Run folders with summary.json and prompts.jsonl: 4 methods x 3 sizes x 3 seeds x 40 prompts. DPO is
    clearly best (0.8); IPO and KTO have the same per-seed means (KTO's prompts are IPO's, permuted), 0.5 at
    tiny-xs and 0.65 above; SFT is the anchor (0.5); IPO on tiny-m seed 1 collapsed (KL 30, win rate 0.1)."""
    rng = np.random.default_rng(0)

    def around(level):
        v = level + 0.1 * rng.standard_normal(40)
        return v + level - v.mean()

    for (model, n), seed in itertools.product(SIZES.items(), range(3)):
        shift = 0.02 * (seed - 1)
        ipo = around((0.5 if model == "tiny-xs" else 0.65) + shift)
        wins = {"sft": np.full(40, 0.5), "dpo": around(0.8 + shift), "ipo": ipo, "kto": rng.permutation(ipo)}
        collapsed = (model, seed) == ("tiny-m", 1)
        if collapsed:
            wins["ipo"] = np.full(40, 0.1)
        for method, w in wins.items():
            run = root / f"reviews-{model}-{method}-s{seed}"
            run.mkdir(parents=True)
            kl = 30.0 if collapsed and method == "ipo" else 2.0
            summary = {"status": "done", "method": method, "model": model, "seed": seed, "task": "reviews",
                       "n_params": n, "eval/win_rate_vs_sft": float(w.mean()), "eval/score_mean": float(w.mean()),
                       "eval/kl": kl, "eval/response_tokens_mean": 12.0, "eval/anchor_response_tokens_mean": 12.0,
                       **({"cost/total_train_flops": n * 1e6} if flops else {})}
            (run / "summary.json").write_text(json.dumps(summary))
            if prompts:
                (run / "prompts.jsonl").write_text("".join(
                    json.dumps({"prompt_index": i, "win_vs_sft": float(x)}) + "\n" for i, x in enumerate(w)))
    return root


def test_words_and_rankings_on_a_synthetic_sweep(tmp_path):
    sweep = fake_sweep(tmp_path / "synthetic")
    df = load_runs(sweep)
    assert df["collapsed"].sum() == 1 and df[df["collapsed"]]["run"].tolist() == ["reviews-tiny-m-ipo-s1"]
    summary = series_summary(df)
    assert set(summary["ci_kind"]) == {stats.HIERARCHICAL}
    ipo_m = summary[(summary["series"] == "ipo") & (summary["model"] == "tiny-m")].iloc[0]
    assert ipo_m["n_seeds"] == 2 and ipo_m["n_collapsed"] == 1 and ipo_m["mean"] == pytest.approx(0.65)
    words = stats.conclusions(summary, pairwise(df), list(SIZES))
    text = "\n".join(words)
    assert words[0].startswith("DPO > SFT at all sizes (win rate vs SFT, 95% CI above 0.5: tiny-xs 0.80 [")
    assert "IPO > SFT at tiny-s, tiny-m (" in text and "IPO vs SFT not distinguishable at tiny-xs (" in text
    assert "1 collapsed run(s) excluded" in text
    assert "DPO > IPO at all sizes" in text and "DPO > KTO at all sizes" in text
    assert ("IPO vs KTO not distinguishable at all sizes." in text) != ("KTO vs IPO not distinguishable at all sizes."
                                                                        in text)
    assert "IPO > KTO" not in text and "KTO > IPO" not in text and "SFT > DPO" not in text
    assert "SFT vs SFT not distinguishable at all sizes" in text and "DPO > SFT at all sizes (95% CI" not in text

    page = build_report(sweep).read_text()
    pairs = pd.read_csv(sweep / "report" / "pairs.csv")
    assert set(pairs["interval"]) == {stats.TUKEY} and len(pairs) == 3 * 4 * 3
    assert "Tukey-Kramer" in page
    assert page.index("Conclusions") < page.index("Ranking on tiny-xs") < page.index("<img")
    assert "ipo on tiny-m, seed 1 (KL 30.0 nats &gt; 15)" in page
    ranks = page[page.index("Ranking on tiny-m"):]
    assert all(f"<td>{r}</td>" in ranks for r in ("1", "2-3", "4"))
    xs = page[page.index("Ranking on tiny-xs"):page.index("Ranking on tiny-s")]
    assert xs.count("<td>2-4</td>") == 3 and "<td>1</td>" in xs
    assert (sweep / "report" / "win_rate_vs_flops.png").stat().st_size > 5000


def test_old_runs_without_prompts_fall_back_to_labelled_seed_cis(tmp_path):
    sweep = fake_sweep(tmp_path / "old", prompts=False, flops=False)
    df = load_runs(sweep)
    summary = series_summary(df)
    assert set(summary["ci_kind"]) == {SEED_ONLY}
    dpo = summary[summary["series"] == "dpo"].iloc[0]
    assert dpo["ci_low"] <= dpo["mean"] <= dpo["ci_high"] and dpo["n_seeds"] == 3
    words = stats.conclusions(summary, pairwise(df), list(SIZES))
    assert f"({SEED_ONLY})" in words[0]
    one_seed = df[df["seed"] == 0]  # one seed, no prompts: the run's own interval, and no pairwise claims
    assert pairwise(one_seed).empty
    assert set(series_summary(one_seed)["ci_kind"]) == {PROMPTS_ONLY}
    build_report(sweep)
    assert not (sweep / "report" / "win_rate_vs_flops.png").exists()


def test_win_rate_matrix_averages_every_seed(tmp_path):
    """Seed 0: A's samples beat B's on every prompt; seed 1: B's beat A's. The matrix shows the mean over both
    seeds (0.5), where it used to show the lowest seed's 1.0."""
    from prefbench.report.plots import win_rate_matrix

    for seed, (a, b) in enumerate([(1.0, 0.0), (0.0, 1.0)]):
        for method, score in (("dpo", a), ("ipo", b)):
            run = tmp_path / "m" / f"reviews-tiny-xs-{method}-s{seed}"
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({"status": "done", "method": method, "model": "tiny-xs",
                                                          "seed": seed, "n_params": 1000}))
            (run / "samples.jsonl").write_text("".join(json.dumps({"prompt_index": p, "score": score}) + "\n"
                                                       for p in range(4) for _ in range(2)))
    df = load_runs(tmp_path / "m")
    mat = win_rate_matrix(df, "tiny-xs")
    assert mat.loc["dpo", "ipo"] == 0.5 and mat.loc["ipo", "dpo"] == 0.5
    assert win_rate_matrix(df, "tiny-xs", seed=0).loc["dpo", "ipo"] == 1.0


def test_block_design_intervals_by_hand():
    """3 series x 3 seeds. Series means A 2, B 3, C 1; seed means 1, 7/3, 8/3; grand mean 2. Residuals
    y - mean_m - mean_s + 2: A (0, -1/3, 1/3), B (0, 2/3, -2/3), C (0, -1/3, 1/3): SSE 4/3 on (3-1)(3-1) = 4
    df, MSE 1/3, se(difference) = sqrt(2 MSE / 3) = sqrt(2) / 3, half-width q(0.95; 3, 4) / sqrt(2) * se = q / 3
    with q = 5.04 (Montgomery, Table VII)."""
    y = {"A": {0: 1, 1: 2, 2: 3}, "B": {0: 2, 1: 4, 2: 3}, "C": {0: 0, 1: 1, 2: 2}}
    pairs = stats.block_pairs(y)
    q = pairs["A", "B"][1] * 3
    assert q == pytest.approx(5.04, abs=0.005)
    assert pairs["A", "B"][0] == pytest.approx(-1) and pairs["B", "C"][0] == pytest.approx(2)
    assert pairs["A", "C"] == pytest.approx((1, q / 3, 4))
    table = stats.pairwise_table({k: {s: {0: v} for s, v in seeds.items()} for k, seeds in y.items()}, n_boot=200)
    verdict = {(r["a"], r["b"]): r["distinguishable"] for _, r in table.iterrows()}
    assert verdict["B", "C"] and verdict["C", "B"] and not verdict["A", "B"] and not verdict["A", "C"]
    assert set(table["interval"]) == {stats.TUKEY}


def test_block_design_ignores_seed_effects_also_with_a_missing_cell():
    rng = np.random.default_rng(1)
    y = {m: {s: float(rng.normal()) for s in range(4)} for m in "ABCD"}
    del y["B"][2]  # a collapsed run left out
    shifted = {m: {s: v + 10.0 * s ** 2 for s, v in seeds.items()} for m, seeds in y.items()}
    plain, moved = stats.block_pairs(y), stats.block_pairs(shifted)
    assert plain.keys() == moved.keys() and len(plain) == 6
    for pair in plain:
        assert moved[pair] == pytest.approx(plain[pair])
    assert plain["A", "B"][2] == 15 - (4 + 4 - 1)  # cells - (series + seeds - 1)
    assert stats.block_pairs({"A": {0: 1.0}, "B": {0: 2.0}}) == {}  # one seed: no residual degree of freedom


def test_three_sign_consistent_seeds_are_not_a_difference():
    """A bootstrap over three seeds calls every sign-consistent triple a difference (the all-smallest resample
    has chance 1/27 > 2.5%), a chance of 1/4 under no effect; the block design asks for more than the sign."""
    b = {s: {0: 0.5} for s in range(3)}
    a = {s: {0: 0.5 + d} for s, d in enumerate([0.01, 0.3, 0.6])}
    assert stats.paired_comparison(a, b, n_boot=4000)["diff_low"] > 0
    row = stats.pairwise_table({"a": a, "b": b}, n_boot=200).iloc[0]
    assert row["boot_low"] > 0 and row["diff_low"] < 0 and not row["distinguishable"]


def test_block_design_keeps_the_familywise_error_at_five_percent():
    """No true difference between 5 series on 3 seeds, large seed effects: the chance that any of the 10 pairs is
    called different is 5% (binomial SE over 2000 simulated sweeps: 0.5%)."""
    rng = np.random.default_rng(0)
    any_false = 0
    for _ in range(2000):
        seed_effect = rng.normal(0, 0.1, 3)
        y = {m: {s: float(seed_effect[s] + rng.normal(0, 0.03)) for s in range(3)} for m in "ABCDE"}
        any_false += any(abs(d) > h for d, h, _ in stats.block_pairs(y).values())
    assert 0.035 < any_false / 2000 < 0.065


def test_many_series_get_one_pairwise_sentence_each():
    """Beyond six series the pairwise verdicts are grouped: per series and size, the series it is ahead of."""
    import itertools

    import pandas as pd
    names = [f"m{i}" for i in range(8)]
    summary = pd.DataFrame([{"series": n, "model": "xs", "mean": 0.9 - 0.05 * i, "ci_low": 0.8 - 0.05 * i,
                             "ci_high": 0.95 - 0.05 * i, "ci_kind": "seeds and prompts", "n_collapsed": 0}
                            for i, n in enumerate(names)])
    pairs = pd.DataFrame([{"a": a, "b": b, "model": "xs", "diff_low": 0.1 if a == "m0" else -0.1, "diff_high": 0.2,
                           "p_a_beats_b": 0.9} for a, b in itertools.combinations(names, 2)])
    lines = stats.conclusions(summary, pairs, ["xs"])
    grouped = [line for line in lines if "simultaneous" in line]
    assert grouped == ["M0 > M1, M2, M3, M4, M5, M6, M7 at xs (simultaneous 95% CIs of the differences in win rate "
                       "vs SFT above 0)."]
    assert lines[-1].startswith("Every other pair is not distinguishable")
