"""Each loss on hand-computed numbers, straight from the papers' formulas (README, "Methods")."""
import math

import pytest
import torch

from prefbench.methods import BatchLogps, SeqLogps, build_method


def seqs(sums, ns):
    return SeqLogps(torch.tensor(sums, dtype=torch.float64), torch.tensor(ns, dtype=torch.float64))


def sig(x):
    return 1 / (1 + math.exp(-x))


POLICY = BatchLogps(chosen=seqs([-10.0, -20.0], [5, 4]), rejected=seqs([-12.0, -15.0], [6, 3]))
REFERENCE = BatchLogps(chosen=seqs([-11.0, -19.0], [5, 4]), rejected=seqs([-11.0, -16.0], [6, 3]))


def test_dpo_by_hand():
    # logits: ((-10+11) - (-12+11)) = 2 ; ((-20+19) - (-15+16)) = -2 ; beta 0.1
    expected = (-math.log(sig(0.2)) - math.log(sig(-0.2))) / 2
    assert float(build_method("dpo", beta=0.1).loss(POLICY, REFERENCE).loss) == pytest.approx(expected, abs=1e-12)


def test_ipo_by_hand_uses_length_averaged_logps():
    # h1 = (-10/5 + 11/5) - (-12/6 + 11/6) = 0.2 + 1/6 ; h2 = (-20/4 + 19/4) - (-15/3 + 16/3) = -0.25 - 1/3
    h = [0.2 + 1 / 6, -0.25 - 1 / 3]
    expected = sum((x - 1 / (2 * 0.5)) ** 2 for x in h) / 2
    assert float(build_method("ipo", beta=0.5).loss(POLICY, REFERENCE).loss) == pytest.approx(expected, abs=1e-12)


def test_kto_by_hand():
    policy = BatchLogps(chosen=seqs([-10.0], [5]), rejected=seqs([-12.0, -15.0], [6, 3]), mismatched=seqs([-30.0, -28.0, -26.0], [1, 1, 1]))
    reference = BatchLogps(chosen=seqs([-11.0], [5]), rejected=seqs([-11.0, -16.0], [6, 3]), mismatched=seqs([-31.0, -29.0, -27.0], [1, 1, 1]))
    z = 1.0  # mean of the mismatched log-ratios, clamped at 0
    r_d, r_u = [1.0], [-1.0, 1.0]
    losses = [2.0 * (1 - sig(0.1 * (r - z))) for r in r_d] + [0.5 * (1 - sig(0.1 * (z - r))) for r in r_u]
    out = build_method("kto", beta=0.1, desirable_weight=2.0, undesirable_weight=0.5).loss(policy, reference)
    assert float(out.loss) == pytest.approx(sum(losses) / 3, abs=1e-12)
    assert float(out.metrics["kto/kl"]) == pytest.approx(1.0)


def test_kto_kl_estimate_is_clamped_at_zero_and_detached():
    mis = seqs([-30.0, -28.0], [1, 1]).sum.clone().requires_grad_()
    policy = BatchLogps(chosen=seqs([-10.0], [5]), rejected=seqs([-12.0], [6]), mismatched=SeqLogps(mis, torch.ones(2)))
    reference = BatchLogps(chosen=seqs([-11.0], [5]), rejected=seqs([-11.0], [6]), mismatched=seqs([-20.0, -20.0], [1, 1]))
    out = build_method("kto").loss(policy, reference)
    assert float(out.metrics["kto/kl"]) == 0.0
    assert not out.loss.requires_grad  # nothing trainable reached the loss but the detached KL term


def test_orpo_by_hand():
    a_w, a_l = -10.0 / 5, -12.0 / 6  # mean log-probs; second pair: -5 and -5
    def log_odds(aw, al):
        return (aw - al) - (math.log(1 - math.exp(aw)) - math.log(1 - math.exp(al)))
    ratio = (math.log(sig(log_odds(a_w, a_l))) + math.log(sig(log_odds(-5.0, -5.0)))) / 2
    nll = (10.0 + 20.0) / (5 + 4)
    assert float(build_method("orpo", lam=0.25).loss(POLICY, None).loss) == pytest.approx(nll - 0.25 * ratio, abs=1e-9)


def test_orpo_is_finite_near_probability_one():
    policy = BatchLogps(chosen=seqs([-1e-9], [3]), rejected=seqs([-50.0], [3]))
    assert torch.isfinite(build_method("orpo").loss(policy, None).loss)


def test_sft_is_token_mean_nll():
    assert float(build_method("sft").loss(POLICY, None).loss) == pytest.approx(30.0 / 9, abs=1e-12)


@pytest.mark.parametrize("name,key", [("dpo", "beta"), ("ipo", "beta"), ("kto", "beta"), ("orpo", "lam")])
def test_non_positive_hyperparameters_are_rejected(name, key):
    with pytest.raises(ValueError, match=f"method.{key} must be > 0"):
        build_method(name, **{key: 0})


def test_kto_batch_with_one_kind_of_example():
    policy = BatchLogps(chosen=seqs([-10.0, -9.0], [5, 5]), mismatched=seqs([-30.0], [1]))
    reference = BatchLogps(chosen=seqs([-11.0, -9.0], [5, 5]), mismatched=seqs([-31.0], [1]))
    expected = ((1 - sig(0.1 * (1.0 - 1.0))) + (1 - sig(0.1 * (0.0 - 1.0)))) / 2
    assert float(build_method("kto").loss(policy, reference).loss) == pytest.approx(expected, abs=1e-12)


def _empty():
    return seqs([], [])


@pytest.mark.parametrize("absent", ["chosen", "rejected"])
@pytest.mark.parametrize("form", ["missing", "zero_length"])
def test_kto_batch_with_either_kind_of_example_only(absent, form):
    """Desirable-only and undesirable-only batches, the role left out of the batch (None) or present with
    zero sequences (as the trainer's ``forward`` fills it): the loss is the mean over the examples present."""
    present = "rejected" if absent == "chosen" else "chosen"
    policy = {present: seqs([-10.0, -9.0], [5, 5]), "mismatched": seqs([-30.0], [1])}
    reference = {present: seqs([-11.0, -9.0], [5, 5]), "mismatched": seqs([-31.0], [1])}
    if form == "zero_length":
        policy[absent], reference[absent] = _empty(), _empty()
    z, r = 1.0, [1.0, 0.0]
    weight, sign = (0.5, -1) if present == "rejected" else (2.0, 1)
    expected = sum(weight * (1 - sig(0.1 * sign * (x - z))) for x in r) / 2
    out = build_method("kto", desirable_weight=2.0, undesirable_weight=0.5).loss(BatchLogps(**policy),
                                                                                  BatchLogps(**reference))
    assert float(out.loss) == pytest.approx(expected, abs=1e-12)
    assert float(out.metrics["kto/kl"]) == pytest.approx(z)
