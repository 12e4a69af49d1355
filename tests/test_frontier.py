"""prefbench.eval.frontier against hand-computed numbers, brute-force enumeration, and the published best-of-n KL."""
import itertools
import math

import numpy as np
import pytest

from prefbench.eval.frontier import (
    bon_curve,
    bon_kl,
    bon_score,
    bon_weights,
    bon_win_rate,
    gao_curve,
    gao_fit,
    lc_win_rate,
    pareto_front,
    value_at_kl,
)


def brute_best_of_n(scores, n, stat):
    """Mean of stat(best sample's score) over every n-subset of the samples (without replacement)."""
    return np.mean([stat(max(c)) for c in itertools.combinations(scores, n)])


def test_bon_kl_by_hand():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 1 / 2, abs=1e-15)
    assert bon_kl(4) == pytest.approx(math.log(4) - 3 / 4, abs=1e-15)
    with pytest.raises(ValueError):
        bon_kl(0)


def test_bon_weights_and_score_by_hand():
    np.testing.assert_allclose(bon_weights(4, 2), [0, 1 / 6, 2 / 6, 3 / 6], atol=1e-15)
    np.testing.assert_allclose(bon_weights(4, 1), [1 / 4] * 4, atol=1e-15)
    np.testing.assert_allclose(bon_weights(4, 4), [0, 0, 0, 1], atol=1e-15)
    for m, n in [(4, 2), (10, 3), (1024, 1), (1024, 37), (1024, 1024)]:
        w = bon_weights(m, n)
        assert w.shape == (m,) and w.sum() == pytest.approx(1, abs=1e-12) and (w[: n - 1] == 0).all()
    np.testing.assert_allclose(bon_weights(30, 7), [math.comb(i - 1, 6) / math.comb(30, 7) for i in range(1, 31)],
                               rtol=1e-10, atol=1e-300)
    # sorted: 1, 2, 3, 4 -> (0*1 + 1*2 + 2*3 + 3*4) / 6
    assert bon_score([3, 1, 2, 4], 2) == pytest.approx(20 / 6, abs=1e-12)
    assert bon_score([3, 1, 2, 4], 2) == pytest.approx(brute_best_of_n([3, 1, 2, 4], 2, float), abs=1e-12)
    for n in (0, 5):
        with pytest.raises(ValueError):
            bon_weights(4, n)


def test_bon_score_and_win_rate_match_brute_force_with_ties():
    scores, others = [1.0, 2.0, 2.0, 3.0, 0.0, 2.0], [2.0, 1.0, 2.0, 4.0, 3.0]
    o = np.asarray(others)
    for n in range(1, len(scores) + 1):
        assert bon_score(scores, n) == pytest.approx(brute_best_of_n(scores, n, float), abs=1e-12)
        expect = brute_best_of_n(scores, n, lambda s: ((s > o) + 0.5 * (s == o)).mean())
        assert bon_win_rate(scores, others, n) == pytest.approx(expect, abs=1e-12)
    # n = 1 is the plain win rate: 1 vs (2,1,2,4,3) -> 0.5/5, 2 -> 2/5, 3 -> 3.5/5, 0 -> 0
    assert bon_win_rate([1, 2, 3, 0], others, 1) == pytest.approx((0.5 + 2 + 3.5 + 0) / 5 / 4)


def test_bon_curve_rows():
    scores = [[1, 2, 3, 4], [0, 0, 1, 5, 2], []]
    anchor = [[2, 2], [1], [0]]
    rows = bon_curve(scores, anchor, ns=(1, 2, 5))
    assert [r["n"] for r in rows] == [1, 2]  # 5 > the fewest samples (4); the empty prompt is skipped
    assert rows[0]["kl"] == 0 and rows[1]["kl"] == pytest.approx(math.log(2) - 0.5)
    assert rows[0]["score_mean"] == pytest.approx((2.5 + 1.6) / 2)
    assert rows[1]["score_mean"] == pytest.approx((20 / 6 + brute_best_of_n(scores[1], 2, float)) / 2)
    assert rows[0]["win_rate_vs_sft"] == pytest.approx((np.mean([0, 0.5, 1, 1]) + np.mean([0, 0, 0.5, 1, 1])) / 2)
    assert rows[1]["win_rate_vs_sft"] == pytest.approx(
        (bon_win_rate(scores[0], anchor[0], 2) + bon_win_rate(scores[1], anchor[1], 2)) / 2)
    assert bon_curve([[], []], [[], []], ns=(1,)) == []


# Published shape: KL(pi_bon || pi) = log n - (n-1)/n (Stiennon et al. 2020, appendix; Gao et al. 2022, section 2).
N_OUTCOMES = 5000


def exact_bon(levels: np.ndarray, n: int) -> np.ndarray:
    """pi_bon over equally likely outcomes whose reward is ``levels`` (ascending): F(r)^n - F(r-)^n per reward
    level, spread evenly over the level's outcomes (a uniformly random tie-break keeps the base's conditional)."""
    values, counts = np.unique(levels, return_counts=True)
    cdf = np.concatenate([[0], np.cumsum(counts)]) / len(levels)
    per_level = cdf[1:] ** n - cdf[:-1] ** n
    return np.repeat(per_level / counts, counts)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_bon_kl_matches_exact_and_monte_carlo(n):
    pi = np.full(N_OUTCOMES, 1 / N_OUTCOMES)
    pi_bon = exact_bon(np.arange(N_OUTCOMES), n)
    log_ratio = np.log(pi_bon / pi)
    assert abs(float(pi_bon @ log_ratio) - bon_kl(n)) < 1e-2
    rng = np.random.default_rng(n)
    y = rng.integers(0, N_OUTCOMES, (20_000, n)).max(axis=1)  # reward = index: the best of n is the largest index
    sample = log_ratio[y]
    se = sample.std(ddof=1) / math.sqrt(len(sample))
    assert abs(sample.mean() - bon_kl(n)) < min(3 * se, 0.05)
    # with ties (5 reward levels) the analytic value is an upper bound, strictly
    pi_tied = exact_bon(np.arange(N_OUTCOMES) // 1000, n)
    assert float(pi_tied @ np.log(pi_tied / pi)) < bon_kl(n) - 1e-3


def test_gao_fit_recovers_both_forms():
    d = np.linspace(0, 5, 30)
    fit = gao_fit(d, d * (1.3 - 0.2 * d), "bon")
    assert fit["alpha"] == pytest.approx(1.3, abs=1e-8) and fit["beta"] == pytest.approx(0.2, abs=1e-8)
    assert fit["peak_kl"] == pytest.approx((1.3 / 0.4) ** 2, abs=1e-8)
    assert fit["peak_reward"] == pytest.approx(1.3**2 / 0.8, abs=1e-8)
    assert fit["r2"] == pytest.approx(1, abs=1e-12) and fit["n_points"] == 30 and fit["form"] == "bon"
    np.testing.assert_allclose(gao_curve(fit, d), d * (1.3 - 0.2 * d), atol=1e-10)

    d = np.linspace(0, 20, 40)  # includes d = 0, where d log d = 0
    r = d * (1.0 - 0.3 * np.log(np.where(d > 0, d, 1)))
    fit = gao_fit(np.concatenate([d, [-1.0, np.nan]]), np.concatenate([r, [7.0, 1.0]]), "rl")  # d < 0, NaN ignored
    assert fit["alpha"] == pytest.approx(1.0, abs=1e-8) and fit["beta"] == pytest.approx(0.3, abs=1e-8)
    peak = math.exp(1.0 / 0.3 - 1)
    assert fit["peak_kl"] == pytest.approx(peak**2, rel=1e-8) and fit["peak_reward"] == pytest.approx(0.3 * peak)
    assert fit["n_points"] == 40 and fit["r2"] == pytest.approx(1, abs=1e-12)
    np.testing.assert_allclose(gao_curve(fit, d), r, atol=1e-10)


def test_gao_fit_without_a_maximum_or_points():
    d = np.linspace(0, 5, 10)
    for form, r in [("bon", d * (1 + 0.1 * d)), ("rl", d * (1 + 0.1 * np.log(np.where(d > 0, d, 1))))]:
        fit = gao_fit(d, r, form)
        assert fit["beta"] == pytest.approx(-0.1, abs=1e-8)
        assert math.isnan(fit["peak_kl"]) and math.isnan(fit["peak_reward"])
    fit = gao_fit([1.0], [0.5], "bon")
    assert fit["n_points"] == 1 and all(math.isnan(fit[k]) for k in ("alpha", "beta", "peak_kl", "peak_reward", "r2"))
    fit = gao_fit([1.0, 2.0], [1.0, 1.5], "bon")  # two points: exact fit, no r2
    assert fit["alpha"] == pytest.approx(1.25) and fit["beta"] == pytest.approx(0.25) and math.isnan(fit["r2"])
    with pytest.raises(ValueError):
        gao_fit(d, d, "ppo")


def test_a_peak_far_beyond_the_measured_kl_is_not_reported():
    """RLOO's fit in the proxy_online reference had beta 0.004: its peak at KL 8e120 was printed as a finding."""
    d = np.linspace(0, 2.3, 15)
    fit = gao_fit(d, d * (0.574 - 0.004 * np.log(np.where(d > 0, d, 1))), "rl")
    assert fit["beta"] == pytest.approx(0.004, abs=1e-8)
    assert math.isnan(fit["peak_kl"]) and math.isnan(fit["peak_reward"])
    far = gao_fit(np.linspace(0, 4, 20), np.linspace(0, 4, 20) * (1.3 - 0.2 * np.linspace(0, 4, 20)), "bon")
    assert far["peak_kl"] == pytest.approx(3.25**2)  # peak at d = 3.25 < 2 x 4: reported
    near = gao_fit(np.linspace(0, 1.5, 20), np.linspace(0, 1.5, 20) * (1.3 - 0.2 * np.linspace(0, 1.5, 20)), "bon")
    assert math.isnan(near["peak_kl"])  # d = 3.25 > 2 x 1.5: beyond what was measured


def test_pareto_front_and_value_at_kl():
    kl = [0.0, 1.0, 2.0, 3.0, 1.5, np.nan, 1.0, 4.0]
    value = [0.1, 0.5, 0.4, 0.9, 0.6, 1.0, 0.3, 0.9]
    # (2, 0.4) is dominated by (1.5, 0.6); (1, 0.3) by (1, 0.5); (4, 0.9) by (3, 0.9); the NaN is dropped
    front_kl, front_value = pareto_front(kl, value)
    np.testing.assert_array_equal(front_kl, [0.0, 1.0, 1.5, 3.0])
    np.testing.assert_array_equal(front_value, [0.1, 0.5, 0.6, 0.9])
    assert math.isnan(value_at_kl(kl, value, -0.5))
    assert value_at_kl(kl, value, 0.0) == pytest.approx(0.1)
    assert value_at_kl(kl, value, 0.5) == pytest.approx(0.3)
    assert value_at_kl(kl, value, 2.25) == pytest.approx(0.6 + 0.5 * 0.3)
    assert value_at_kl(kl, value, 3.0) == pytest.approx(0.9) and value_at_kl(kl, value, 100.0) == pytest.approx(0.9)
    assert math.isnan(value_at_kl([np.nan], [1.0], 1.0))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_lc_win_rate_equals_raw_when_length_does_not_matter():
    delta = np.repeat([-50.0, -10.0, 10.0, 50.0, 120.0], 5)
    verdicts = np.tile([1.0, 1.0, 0.0, 0.5, 1.0], 5)  # the same verdicts at every length difference
    out = lc_win_rate(verdicts, delta)
    assert out["raw_win_rate"] == pytest.approx(0.7) and out["n"] == 25
    assert abs(out["length_coef"]) < 0.01  # not exactly 0: the ridge pulls a, and the deltas are not centred
    assert out["lc_win_rate"] == pytest.approx(0.7, abs=2e-3) and out["scale"] == pytest.approx(delta.std())
    symmetric = np.repeat([-50.0, -10.0, 10.0, 50.0], 5)  # tanh(delta/s) sums to 0: b = 0 exactly
    out = lc_win_rate(verdicts[:20], symmetric)
    assert out["length_coef"] == pytest.approx(0, abs=1e-10) and out["lc_win_rate"] == pytest.approx(0.7, abs=2e-3)


def test_lc_win_rate_removes_a_length_explained_advantage():
    delta = 30 + np.linspace(-100, 100, 201)  # balanced around a positive shift: most responses are longer
    out = lc_win_rate((delta > 0).astype(float), delta)  # win iff longer: perfectly separated
    assert out["raw_win_rate"] == pytest.approx(130 / 201)
    assert all(math.isfinite(out[k]) for k in ("lc_win_rate", "length_coef"))
    assert out["length_coef"] > 1 and abs(out["lc_win_rate"] - 0.5) < 0.05
    # fractional targets from a known GLM: the fit recovers it, the LC win rate is sigma(a)
    targets = sigmoid(0.4 + 1.5 * np.tanh(delta / 40))
    out = lc_win_rate(targets, delta, scale=40)
    assert out["lc_win_rate"] == pytest.approx(sigmoid(0.4), abs=2e-3)
    assert out["length_coef"] == pytest.approx(1.5, abs=0.05)
    assert out["raw_win_rate"] > out["lc_win_rate"] + 0.05


def test_lc_win_rate_edge_cases():
    out = lc_win_rate(np.ones(10), np.arange(10.0))  # all wins: separated in a, finite through the ridge
    assert math.isfinite(out["lc_win_rate"]) and 0.9 < out["lc_win_rate"] < 1 and out["raw_win_rate"] == 1
    out = lc_win_rate([1, 0, 1, 1], [5, 5, 5, 5])  # no spread in length: the model is sigma(a)
    assert out["length_coef"] == 0 and out["lc_win_rate"] == pytest.approx(0.75, abs=5e-3)
    out = lc_win_rate([], [])
    assert out["n"] == 0 and math.isnan(out["lc_win_rate"]) and math.isnan(out["raw_win_rate"])
    with pytest.raises(ValueError):
        lc_win_rate([1.5], [1.0])
