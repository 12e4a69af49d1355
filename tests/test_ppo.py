"""PPO (prefbench/methods/ppo.py): GAE, whitening and the loss against values computed by hand in plain Python, its gradients,
and the trainer's value head (the ``values`` statistic): trained, checkpointed, resumed exactly, never saved into
the policy. Its training on the bandit is in tests/test_online.py with the other online methods."""
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from prefbench import methods
from prefbench.model.models import make_value_head
from prefbench.methods import BatchLogps, SeqLogps
from prefbench.methods.ppo import gae, whiten
from tests.test_online import straight_and_resumed, tok  # noqa: F401

POLICY = [[-1.0, -2.0, -0.5], [-0.3], [-1.2, -0.7]]
REF = [[-1.1, -1.5, -0.5], [-0.6], [-1.0, -1.0]]
VALUES = [[0.2, -0.1, 0.4], [0.5], [-0.3, 0.1]]
SCORES = [1.0, -0.5, 0.25]


def padded(rows, **kw):
    width = max(map(len, rows))
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float64, **kw)


def hand_gae(rewards, values, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V past the end 0."""
    n = len(rewards)
    delta = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** (j - t) * delta[j] for j in range(t, n)) for t in range(n)]


def hand_whiten(rows, shift_mean=True):
    flat = [x for r in rows for x in r]
    mean = sum(flat) / len(flat)
    var = sum((x - mean) ** 2 for x in flat) / (len(flat) - 1)
    return [[(x - mean) / math.sqrt(var + 1e-8) + (0 if shift_mean else mean) for x in r] for r in rows]


def batch(values_grad=False):
    policy = padded(POLICY, requires_grad=True)
    values = padded(VALUES, requires_grad=values_grad)
    n = torch.tensor([len(r) for r in POLICY])
    pol = SeqLogps(policy.sum(1), n, policy, torch.tensor(SCORES, dtype=torch.float64), values=values)
    ref = SeqLogps(padded(REF).sum(1), n, padded(REF))
    return BatchLogps(samples=pol), BatchLogps(samples=ref), policy, values


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_is_the_discounted_sum_of_td_errors(gamma, lam):
    rewards = [[0.1, -0.2, 1.0], [0.5], [0.0, 2.0]]
    got = gae(padded(rewards), padded(VALUES), padded([[1] * len(r) for r in rewards]), gamma, lam)
    for i, r in enumerate(rewards):
        assert got[i, :len(r)].tolist() == pytest.approx(hand_gae(r, VALUES[i], gamma, lam), abs=1e-12)
        assert (got[i, len(r):] == 0).all()


def test_whiten_standardises_over_the_masked_tokens():
    mask = padded([[1] * len(r) for r in POLICY])
    for shift in (True, False):
        got = whiten(padded(POLICY), mask, shift_mean=shift)
        want = hand_whiten(POLICY, shift)
        for i, r in enumerate(want):
            assert got[i, :len(r)].tolist() == pytest.approx(r, abs=1e-9)


@pytest.mark.parametrize("kl_estimator,whiten_rewards", [("k1", False), ("k3", True)])
def test_ppo_loss_is_the_clipped_objective_of_whitened_gae_plus_the_value_loss(kl_estimator, whiten_rewards):
    method = methods.build_method("ppo", kl_estimator=kl_estimator, whiten_rewards=whiten_rewards)
    policy, reference, *_ = batch()
    out = method.loss(policy, reference)
    rewards = []
    for p, r, score in zip(POLICY, REF, SCORES):
        kl = [a - b if kl_estimator == "k1" else math.exp(b - a) - (b - a) - 1 for a, b in zip(p, r)]
        row = [-method.beta * k for k in kl]
        row[-1] += score
        rewards.append(row)
    if whiten_rewards:
        rewards = hand_whiten(rewards, shift_mean=False)
    adv = [hand_gae(r, v, method.gamma, method.lam) for r, v in zip(rewards, VALUES)]
    returns = [[a + v for a, v in zip(ra, rv)] for ra, rv in zip(adv, VALUES)]
    white = hand_whiten(adv)
    n = sum(map(len, POLICY))
    pg = sum(-a for row in white for a in row) / n  # rho = 1: the clip changes nothing
    vf = sum(0.5 * (v - g) ** 2 for rv, rg in zip(VALUES, returns) for v, g in zip(rv, rg)) / n
    assert float(out.loss.detach()) == pytest.approx(pg + method.vf_coef * vf, abs=1e-9)
    assert float(out.metrics["online/value_loss"]) == pytest.approx(vf, abs=1e-9)
    assert pg == pytest.approx(0.0, abs=1e-9)  # whitened advantages have mean 0


OLD = [[-1.5, -1.7, -0.5], [-0.3], [-0.9, -0.7]]  # pi_old of a reused rollout: ratios e^0.5, e^-0.3, 1, ...
V_OLD = [[0.5, -0.1, 0.1], [0.5], [-0.3, 0.6]]  # V_old: the value clip (0.2) acts where V moved further


def test_a_reused_rollout_clips_the_ratio_and_the_values_around_pi_old_and_v_old():
    """A later update of a rollout (``updates_per_rollout`` > 1): the KL reward, GAE and the returns use pi_old
    and V_old (``SeqLogps.old``); -min(rho A, clip(rho) A) and max((V - R)^2, (clip(V, V_old +- 0.2) - R)^2)."""
    method = methods.build_method("ppo", updates_per_rollout=2)
    policy, reference, *_ = batch()
    n_tokens = policy.samples.n_tokens
    old = SeqLogps(padded(OLD).sum(1), n_tokens, padded(OLD), values=padded(V_OLD))
    out = method.loss(BatchLogps(samples=replace(policy.samples, old=old)), reference)
    rewards = []
    for o, r, score in zip(OLD, REF, SCORES):
        row = [-method.beta * (a - b) for a, b in zip(o, r)]
        row[-1] += score
        rewards.append(row)
    adv = [hand_gae(r, v, method.gamma, method.lam) for r, v in zip(rewards, V_OLD)]
    returns = [[a + v for a, v in zip(ra, rv)] for ra, rv in zip(adv, V_OLD)]
    white = hand_whiten(adv)
    pg = vf = cut = 0.0
    for i in range(3):
        for t in range(len(POLICY[i])):
            rho, a = math.exp(POLICY[i][t] - OLD[i][t]), white[i][t]
            pg += -min(rho * a, min(max(rho, 0.8), 1.2) * a)
            cut += (rho > 1.2 and a > 0) or (rho < 0.8 and a < 0)
            v, v_old, g = VALUES[i][t], V_OLD[i][t], returns[i][t]
            vf += 0.5 * max((v - g) ** 2, (v_old + min(max(v - v_old, -0.2), 0.2) - g) ** 2)
    n = sum(map(len, POLICY))
    assert float(out.loss.detach()) == pytest.approx(pg / n + method.vf_coef * vf / n, abs=1e-9)
    assert float(out.metrics["online/clip_fraction"]) == pytest.approx(cut / n, abs=1e-7) and cut > 0
    assert float(out.metrics["online/value_loss"]) == pytest.approx(vf / n, abs=1e-9)


def test_ppo_gradients_are_the_advantages_and_the_value_regression():
    method = methods.build_method("ppo")
    policy, reference, logps, values = batch(values_grad=True)
    out = method.loss(policy, reference)
    out.loss.backward()
    mask = padded([[1] * len(r) for r in POLICY])
    n = mask.sum()
    with torch.no_grad():
        r = -method.beta * (logps - padded(REF)) * mask
        r[torch.arange(3), torch.tensor([2, 0, 1])] += torch.tensor(SCORES, dtype=torch.float64)
        adv = gae(r, values, mask, method.gamma, method.lam)
        returns = adv + values
    assert torch.allclose(logps.grad, -whiten(adv, mask) / n, atol=1e-12)
    assert torch.allclose(values.grad, method.vf_coef * (values - returns) * mask / n, atol=1e-12)


def test_ppo_refuses_bad_settings():
    with pytest.raises(ValueError, match="kl_estimator"):
        methods.build_method("ppo", kl_estimator="k2")
    with pytest.raises(ValueError, match="gamma"):
        methods.build_method("ppo", lam=1.5)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="updates_per_rollout must be a whole number"):
            methods.build_method("ppo", updates_per_rollout=bad)


def test_the_value_head_trains_resumes_exactly_and_stays_out_of_the_policy(tok, tmp_path):  # noqa: F811
    straight, resumed = straight_and_resumed(methods.build_method("ppo"), tok, tmp_path)
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))
    assert set(load_file(tmp_path / "resumed" / "checkpoint" / "model.safetensors")) == set(straight.state_dict())
    heads = [torch.load(tmp_path / run / "checkpoint" / "trainer_state.pt", weights_only=True)["progress"]["value_head"]
             for run in ("straight", "resumed")]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert not torch.equal(heads[0]["weight"], make_value_head(straight, 0).weight)  # it was trained


def test_the_value_head_takes_the_policys_dtype():
    """A float64 policy (the distributed test's) met a float32 head: "mat1 and mat2 must have the same dtype"."""
    from tests.test_online import bandit_model

    policy = bandit_model().double()
    head = make_value_head(policy, 0)
    assert head.weight.dtype == torch.float64
    hidden = policy(torch.tensor([[2, 3]]), output_hidden_states=True).hidden_states[-1]
    assert head(hidden).shape == (1, 2, 1)
