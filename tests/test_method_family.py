"""The offline method family against its papers' formulas on hand-set numbers (golden tests).

Each case gives two pairs' summed log-probs S, token counts n and, for token-level methods, per-token log-probs;
the expected loss is the paper's equation evaluated with plain floats (``math``), independently of the method's
tensor code. TRL parity on a real model, including the gradient, is in ``test_trl_parity_family.py``.
"""
import math

import pytest
import torch

from prefbench import methods
from prefbench.methods import BatchLogps, SeqLogps

# two pairs: policy and reference summed log-probs of chosen (w) and rejected (l), and token counts
SW, SL, RW, RL = [-10.0, -6.0], [-12.0, -5.0], [-11.0, -6.5], [-11.5, -7.0]
NW, NL = [4, 3], [2, 5]
TOKENS_W = [[-4.0, -3.0, -2.0, -1.0], [-1.0, -2.0, -3.0]]  # per-token, summing to SW
TOKENS_L = [[-7.0, -5.0], [-1.0, -1.0, -1.0, -1.0, -1.0]]
REF_TOKENS_W = [[-4.5, -3.0, -2.5, -1.0], [-2.0, -2.0, -2.5]]  # summing to RW
REF_TOKENS_L = [[-6.0, -5.5], [-1.0, -1.5, -1.5, -1.5, -1.5]]


def ls(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))  # log sigma(x)


def sig(x):
    return 1 / (1 + math.exp(-x))


def padded(rows):
    width = max(map(len, rows))
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float64)


def batch(sw, sl, tw=None, tl=None):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return BatchLogps(chosen=SeqLogps(t(sw), torch.tensor(NW), None if tw is None else padded(tw)),
                      rejected=SeqLogps(t(sl), torch.tensor(NL), None if tl is None else padded(tl)))


def pairs():
    """Per pair: h_w, h_l (log-ratios), A_w, A_l (policy per-token means), n_w, n_l."""
    return [(SW[i] - RW[i], SL[i] - RL[i], SW[i] / NW[i], SL[i] / NL[i], NW[i], NL[i]) for i in range(2)]


def mean(values):
    return sum(values) / len(values)


NLL = -(SW[0] + SW[1]) / (NW[0] + NW[1])  # token mean over the batch's chosen tokens
B = 0.1

EXPECTED = {  # name, params -> the paper's loss
    ("simpo", (("beta", 2.0), ("gamma", 1.0))): mean([-ls(2.0 * (aw - al) - 1.0) for _, _, aw, al, _, _ in pairs()]),
    ("cpo", (("beta", B), ("alpha", 1.0))): mean([-ls(B * (SW[i] - SL[i])) for i in range(2)]) + NLL,
    ("alphapo", (("beta", 2.0), ("gamma", 1.0), ("alpha", 0.25))): mean(
        [-ls(2.0 * ((1 - math.exp(-0.25 * aw)) / 0.25 - (1 - math.exp(-0.25 * al)) / 0.25) - 1.0)
         for _, _, aw, al, _, _ in pairs()]),
    ("slic", (("beta", 1.0), ("lam", 0.1))): mean([max(0.0, 1 - (SW[i] - SL[i])) for i in range(2)]) + 0.1 * NLL,
    ("rrhf", (("lam", 1.0),)): mean([max(0.0, al - aw) for _, _, aw, al, _, _ in pairs()]) + NLL,
    ("cdpo", (("beta", B), ("eps", 0.1))): mean([-0.9 * ls(B * (hw - hl)) - 0.1 * ls(-B * (hw - hl))
                                                for hw, hl, *_ in pairs()]),
    ("robust_dpo", (("beta", B), ("eps", 0.1))): mean([(-0.9 * ls(B * (hw - hl)) + 0.1 * ls(-B * (hw - hl))) / 0.8
                                                      for hw, hl, *_ in pairs()]),
    ("exo", (("beta", B), ("eps", 1e-3))): mean(
        [sig(B * (hw - hl)) * (ls(B * (hw - hl)) - math.log(1 - 1e-3))
         + sig(-B * (hw - hl)) * (ls(-B * (hw - hl)) - math.log(1e-3)) for hw, hl, *_ in pairs()]),
    ("nca", (("beta", B),)): mean([-ls(B * hw) - 0.5 * ls(-B * hw) - 0.5 * ls(-B * hl) for hw, hl, *_ in pairs()]),
    ("apo_zero", (("beta", B),)): mean([(1 - sig(B * hw)) + sig(B * hl) for hw, hl, *_ in pairs()]),
    ("apo_down", (("beta", B),)): mean([sig(B * hw) + 1 - sig(B * (hw - hl)) for hw, hl, *_ in pairs()]),
    ("sppo_hard", (("beta", B),)): mean([(hw - 5.0) ** 2 + (hl + 5.0) ** 2 for hw, hl, *_ in pairs()]),
    ("discopop", (("beta", 0.05), ("tau", 0.05))): mean(
        [(1 - sig(0.05 * (hw - hl) / 0.05)) * -ls(0.05 * (hw - hl)) + sig(0.05 * (hw - hl) / 0.05)
         * math.exp(-0.05 * (hw - hl)) for hw, hl, *_ in pairs()]),
    ("dpo_norm", (("beta", 1.0),)): mean([-ls(hw / nw - hl / nl) for hw, hl, _, _, nw, nl in pairs()]),
    ("rdpo", (("beta", B), ("alpha", 0.01))): mean([-ls(B * (hw - hl) + 0.01 * (nw - nl))
                                                   for hw, hl, _, _, nw, nl in pairs()]),
    ("dpop", (("beta", B), ("lam", 50.0))): mean([-ls(B * (hw - hl - 50.0 * max(0.0, -hw))) for hw, hl, *_ in pairs()]),
    ("rpo", (("beta", B), ("alpha", 1.0))): mean([-ls(B * (hw - hl)) for hw, hl, *_ in pairs()]) + NLL,
    ("fdpo", (("beta", B), ("divergence", "forward_kl"))): mean(
        [-ls(B * ((1 - math.exp(-hw)) - (1 - math.exp(-hl)))) for hw, hl, *_ in pairs()]),
    ("fdpo", (("beta", B), ("divergence", "js"))): mean(
        [-ls(B * ((math.log(2) + ls(hw)) - (math.log(2) + ls(hl)))) for hw, hl, *_ in pairs()]),
    ("fdpo", (("beta", B), ("divergence", "alpha"), ("alpha", 0.3))): mean(
        [-ls(B * ((1 - math.exp(-0.3 * hw)) / 0.3 - (1 - math.exp(-0.3 * hl)) / 0.3)) for hw, hl, *_ in pairs()]),
    ("fdpo", (("beta", B), ("divergence", "reverse_kl"))): mean([-ls(B * (hw - hl)) for hw, hl, *_ in pairs()]),
}


def test_aot_sorts_the_batch():
    gaps = sorted(SW[i] - SL[i] for i in range(2))
    ref_gaps = sorted(RW[i] - RL[i] for i in range(2))
    expected = mean([-ls(B * (g - r)) for g, r in zip(gaps, ref_gaps)])
    out = methods.build_method("aot", beta=B).loss(batch(SW, SL), batch(RW, RL)).total()
    assert float(out) == pytest.approx(expected, abs=1e-12)
    hw, hl = sorted(SW[i] - RW[i] for i in range(2)), sorted(SL[i] - RL[i] for i in range(2))
    expected = mean([-ls(B * (w - lo)) for w, lo in zip(hw, hl)])
    out = methods.build_method("aot_unpaired", beta=B).loss(batch(SW, SL), batch(RW, RL)).total()
    assert float(out) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name,params", list(EXPECTED), ids=lambda v: v if isinstance(v, str) else "")
def test_loss_is_the_papers_equation(name, params):
    method = methods.build_method(name, **dict(params))
    reference = batch(RW, RL) if method.needs_reference else None
    out = method.loss(batch(SW, SL), reference).total()
    assert float(out) == pytest.approx(EXPECTED[name, params], abs=1e-12)


def test_ld_dpo_weights_the_tokens_past_the_shorter_response():
    alpha = 0.5
    expected = []
    for i in range(2):
        shared = min(NW[i], NL[i])

        def s(tokens):
            return sum(tokens[:shared]) + alpha * sum(tokens[shared:])
        h = (s(TOKENS_W[i]) - s(REF_TOKENS_W[i])) - (s(TOKENS_L[i]) - s(REF_TOKENS_L[i]))
        expected.append(-ls(B * h))
    method = methods.build_method("ld_dpo", beta=B, alpha=alpha)
    out = method.loss(batch(SW, SL, TOKENS_W, TOKENS_L), batch(RW, RL, REF_TOKENS_W, REF_TOKENS_L)).total()
    assert float(out) == pytest.approx(mean(expected), abs=1e-12)
    # alpha = 1 is DPO
    dpo = methods.build_method("dpo", beta=B).loss(batch(SW, SL), batch(RW, RL)).total()
    one = methods.build_method("ld_dpo", beta=B, alpha=1.0).loss(batch(SW, SL, TOKENS_W, TOKENS_L),
                                                                 batch(RW, RL, REF_TOKENS_W, REF_TOKENS_L)).total()
    assert float(one) == pytest.approx(float(dpo), abs=1e-12)


def test_bco_shifts_by_the_running_mean_reward():
    method = methods.build_method("bco", beta=B)
    state, seen = method.initial_state(), []
    for k in range(3):  # three batches, each chosen log-prob one nat lower than the last
        sw = [x - k for x in SW]
        out = method.loss(batch(sw, SL), batch(RW, RL), state)
        seen += [B * (sw[i] - RW[i]) for i in range(2)] + [B * (SL[i] - RL[i]) for i in range(2)]
        delta = mean(seen)  # the running mean of every reward seen, this batch's included
        expected = mean([-ls(B * (sw[i] - RW[i]) - delta) - ls(-(B * (SL[i] - RL[i]) - delta)) for i in range(2)])
        assert float(out.total()) == pytest.approx(expected, abs=1e-12)
        assert float(out.state["delta"]) == pytest.approx(delta, abs=1e-12)
        state = out.state


def test_beta_dpo_adapts_beta_and_filters_to_the_typical_pairs():
    method = methods.build_method("beta_dpo", beta=B, a=0.6, rho=0.2)
    g = [hw - hl for hw, hl, *_ in pairs()]
    m = 0.1 * mean(g)  # momentum 0.9 from a state of 0
    s = 0.1 * math.sqrt(sum((x - mean(g)) ** 2 for x in g) / (len(g) - 1))
    weight = [math.exp(-0.5 * ((x - m) / s) ** 2) for x in g]
    keep = max(range(2), key=lambda i: weight[i])  # floor(0.8 * 2) = 1 pair kept: the more typical one
    beta = B * (1 + 0.6 * (g[keep] - m))
    out = method.loss(batch(SW, SL), batch(RW, RL), method.initial_state())
    assert float(out.total()) == pytest.approx(-ls(beta * g[keep]), abs=1e-12)
    assert float(out.state["mean"]) == pytest.approx(m, abs=1e-12) and float(out.state["std"]) == pytest.approx(s)
    # a = 0 and rho = 0: plain DPO
    plain = methods.build_method("beta_dpo", beta=B, a=0.0, rho=0.0)
    dpo = methods.build_method("dpo", beta=B).loss(batch(SW, SL), batch(RW, RL)).total()
    assert float(plain.loss(batch(SW, SL), batch(RW, RL), plain.initial_state()).total()) == pytest.approx(float(dpo))


COLLISION_W = [[-0.5, -0.4, -0.3, -0.2], [-0.2, -0.3, -0.4]]  # log sum_v p(v)^2 per token
COLLISION_L = [[-0.6, -0.5], [-0.2, -0.2, -0.2, -0.2, -0.2]]
KL_W = [[0.3, 0.1, 0.0, 0.2], [0.05, 0.1, 0.4]]  # KL(ref || policy) per token
KL_L = [[0.5, 0.25], [0.1, 0.0, 0.2, 0.3, 0.1]]


def with_fields(b: BatchLogps, **per_role) -> BatchLogps:
    from dataclasses import replace
    return BatchLogps(**{role: replace(b[role], **{k: padded(v[i]) for k, v in per_role.items()})
                         for i, role in enumerate(("chosen", "rejected"))})


def test_wpo_weights_each_pair_by_its_aligned_probability():
    def w(tokens, collision):
        return math.exp(mean([t - c for t, c in zip(tokens, collision)]))
    expected = mean([w(TOKENS_W[i], COLLISION_W[i]) * w(TOKENS_L[i], COLLISION_L[i]) * -ls(B * (hw - hl))
                     for i, (hw, hl, *_) in enumerate(pairs())])
    policy = with_fields(batch(SW, SL, TOKENS_W, TOKENS_L), token_collision=(COLLISION_W, COLLISION_L))
    out = methods.build_method("wpo", beta=B).loss(policy, batch(RW, RL))
    assert float(out.total()) == pytest.approx(expected, abs=1e-12)
    # the weights carry no gradient: d loss / d S(yw) is the DPO term's, scaled by the weight
    from dataclasses import replace
    tokens, sums = policy.chosen.tokens.clone().requires_grad_(True), policy.chosen.sum.clone().requires_grad_(True)
    graded = BatchLogps(chosen=replace(policy.chosen, tokens=tokens, sum=sums), rejected=policy.rejected)
    methods.build_method("wpo", beta=B).loss(graded, batch(RW, RL)).total().backward()
    assert tokens.grad is None
    for i, (hw, hl, *_) in enumerate(pairs()):
        weight = w(TOKENS_W[i], COLLISION_W[i]) * w(TOKENS_L[i], COLLISION_L[i])
        assert float(sums.grad[i]) == pytest.approx(-weight * B * sig(-B * (hw - hl)) / 2, abs=1e-12)


@pytest.mark.parametrize("version,alpha", [(1, 0.5), (2, 0.5), (2, 0.2)])
def test_tdpo_subtracts_the_sequential_kl_difference(version, alpha):
    expected = []
    for i, (hw, hl, *_) in enumerate(pairs()):
        dw, dl = sum(KL_W[i]), sum(KL_L[i])
        penalty = dl - dw if version == 1 else alpha * (dl - dw)
        expected.append(-ls(B * ((hw - hl) - penalty)))
    policy = with_fields(batch(SW, SL), token_kl=(KL_W, KL_L))
    method = methods.build_method("tdpo", beta=B, alpha=alpha, version=version)
    assert float(method.loss(policy, batch(RW, RL)).total()) == pytest.approx(mean(expected), abs=1e-12)


def test_tdpo2_stops_the_gradient_of_the_chosen_kl():
    from dataclasses import replace
    kl_w, kl_l = padded(KL_W).requires_grad_(True), padded(KL_L).requires_grad_(True)
    base = batch(SW, SL)
    policy = BatchLogps(chosen=replace(base.chosen, token_kl=kl_w), rejected=replace(base.rejected, token_kl=kl_l))
    methods.build_method("tdpo", version=2).loss(policy, batch(RW, RL)).total().backward()
    assert kl_w.grad is None and float(kl_l.grad.abs().sum()) > 0
    kl_w.grad = kl_l.grad = None
    methods.build_method("tdpo", version=1).loss(policy, batch(RW, RL)).total().backward()
    assert float(kl_w.grad.abs().sum()) > 0  # TDPO1 pushes the chosen KL too


def test_orpo_nll_scope_counts_the_prompt_tokens_when_asked():
    from dataclasses import replace
    prompt_sum, prompt_n = [-3.0, -2.0], [2, 1]
    base = batch(SW, SL)
    policy = BatchLogps(chosen=replace(base.chosen, prompt_sum=torch.tensor(prompt_sum, dtype=torch.float64),
                                       prompt_n_tokens=torch.tensor(prompt_n)), rejected=base.rejected)
    odds = mean([ls((aw - al) - (math.log1p(-math.exp(aw)) - math.log1p(-math.exp(al))))
                 for _, _, aw, al, _, _ in pairs()])
    sequence_nll = -(sum(SW) + sum(prompt_sum)) / (sum(NW) + sum(prompt_n))
    orpo = methods.build_method("orpo", lam=0.5, nll="sequence")
    assert orpo.statistics == {"prompt"} and not methods.build_method("orpo").statistics
    assert float(orpo.loss(policy, None).total()) == pytest.approx(sequence_nll - 0.5 * odds, abs=1e-12)
    completion = methods.build_method("orpo", lam=0.5).loss(policy, None).total()
    assert float(completion) == pytest.approx(NLL - 0.5 * odds, abs=1e-12)
    with pytest.raises(ValueError, match="method.nll"):
        methods.build_method("orpo", nll="prompt")
