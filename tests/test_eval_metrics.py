"""Evaluation metrics on small hand-checked inputs, and the offline embedder."""
import numpy as np
import pytest

from prefbench.eval import metrics as em


def test_win_rate_counts_ties_as_half():
    # prompt 1: A's samples [1, 2] vs B's [2]: (1<2 -> 0) (2=2 -> 0.5) => 0.25 ; prompt 2: [3] vs [1, 3, 5] => 1/2
    per_prompt = em.prompt_win_rates([[1, 2], [3]], [[2], [1, 3, 5]])
    assert per_prompt.tolist() == [0.25, 0.5]
    assert em.win_rate([[1, 2], [3]], [[2], [1, 3, 5]])["mean"] == pytest.approx(0.375)


def test_win_rate_ci_bounds():
    always = em.win_rate([[1.0]] * 20, [[0.0]] * 20, n_boot=200)
    assert always == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    mixed = em.win_rate([[1.0]] * 10 + [[0.0]] * 10, [[0.5]] * 20, n_boot=2000)
    assert mixed["ci_low"] < 0.5 < mixed["ci_high"]
    assert 0.2 < mixed["ci_low"] and mixed["ci_high"] < 0.8
    assert em.win_rate([[2.0]], [[2.0]])["mean"] == 0.5


def test_distinct_n():
    assert em.distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert em.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert em.distinct_n(["a b", "c d"], 2) == 1.0
    assert em.distinct_n([], 1) == 0.0


def test_pid_aid_identical_vs_orthogonal():
    same = np.tile([[1.0, 0.0, 0.0]], (3, 1))
    ortho = np.eye(3)
    assert em.mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert em.mean_pairwise_cosine(ortho) == pytest.approx(0.0)
    pid, aid = em.pid_aid([same, ortho])  # prompts: identical samples; orthogonal samples
    assert pid == pytest.approx(0.5)
    assert aid == pytest.approx(1.0)  # first samples: [1,0,0] and [1,0,0]


def test_kl_estimate_sign_on_a_known_pair_of_distributions():
    rng = np.random.default_rng(0)
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.2, 0.3, 0.5])
    ys = rng.choice(3, size=20000, p=p)
    estimate = em.kl_estimate(np.log(p[ys]), np.log(q[ys]))
    exact = float((p * np.log(p / q)).sum())
    assert estimate > 0 and estimate == pytest.approx(exact, rel=0.05)
    assert em.kl_estimate(np.log(p[ys]), np.log(p[ys])) == 0.0


def test_embedder_loads_offline_and_embeds_meaningfully():
    from prefbench.eval.embedder import embed

    e = embed(["the movie was great.", "the film was wonderful.", "sort the digits 3 1 2"])
    assert e.shape == (3, 384)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]
