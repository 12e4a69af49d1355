"""The offline method family against TRL 1.16's own losses, on the same model, batch and reference log-probs,
loss and gradient to 1e-5 (the harness of ``test_trl_parity.py``).

DPOTrainer's loss types and options (``loss_type``, ``label_smoothing``, ``f_divergence_type``, ``ld_alpha``,
``loss_weights``, ``use_weighting``) are compared through ``DPOTrainer._compute_loss``; CPOTrainer's (SimPO, CPO,
AlphaPO, SLiC) through ``CPOTrainer.cpo_loss`` on identical log-probs plus its NLL term, as the ORPO test does;
ORPO with the prompt in its NLL through ``ORPOTrainer.get_batch_loss_metrics``, the whole loss. TDPO, which TRL
lacks, against the official code's formulas on the model's full logits.
"""
import copy

import pytest
import torch

from prefbench import methods
from prefbench.data.views import pad_batch
from prefbench.model.logprobs import sequence_logps
from prefbench.model.packing import packed_attention
from tests.test_trl_parity import PAIRS, REF_CHOSEN, REF_REJECTED, ROWS, conversational, logps, model, tok  # noqa: F401

DPO_FAMILY = [  # prefbench method and params, TRL DPOConfig settings
    ("robust_dpo", {"beta": 0.1, "eps": 0.1}, {"loss_type": ["robust"], "label_smoothing": 0.1}),
    ("exo", {"beta": 0.1, "eps": 1e-3}, {"loss_type": ["exo_pair"], "label_smoothing": 1e-3}),
    ("nca", {"beta": 0.1}, {"loss_type": ["nca_pair"]}),
    ("apo_zero", {"beta": 0.1}, {"loss_type": ["apo_zero"]}),
    ("apo_down", {"beta": 0.1}, {"loss_type": ["apo_down"]}),
    ("sppo_hard", {"beta": 0.1}, {"loss_type": ["sppo_hard"]}),
    ("aot", {"beta": 0.1}, {"loss_type": ["aot"]}),
    ("aot_unpaired", {"beta": 0.1}, {"loss_type": ["aot_unpaired"]}),
    ("discopop", {"beta": 0.05, "tau": 0.05}, {"loss_type": ["discopop"], "beta": 0.05, "discopop_tau": 0.05}),
    ("dpo_norm", {"beta": 1.0}, {"loss_type": ["sigmoid_norm"], "beta": 1.0}),
    ("rpo", {"beta": 0.1, "alpha": 0.7}, {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.7]}),
    ("fdpo", {"beta": 0.1, "divergence": "forward_kl"}, {"f_divergence_type": "forward_kl"}),
    ("fdpo", {"beta": 0.1, "divergence": "js"}, {"f_divergence_type": "js_divergence"}),
    # the paper's alpha is 1 - TRL's f_alpha_divergence_coef (prefbench/methods/fdpo.py)
    ("fdpo", {"beta": 0.1, "divergence": "alpha", "alpha": 0.3},
     {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.7}),
    ("bco", {"beta": 0.1}, {"loss_type": ["bco_pair"]}),
    ("wpo", {"beta": 0.1}, {"loss_type": ["sigmoid"], "use_weighting": True}),
]


def grads(model, loss) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward(retain_graph=True)  # the CPO family shares the log-prob graph with TRL's formula
    out = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    return out


def assert_same(ours, theirs, model):
    assert float(ours) == pytest.approx(float(theirs), abs=1e-5, rel=1e-5)  # rel: SPPO's squares, forward KL's exp
    g_ours, g_theirs = grads(model, ours), grads(model, theirs)
    assert len(g_ours) == len(g_theirs) > 0
    scale = max(1.0, max(float(g.abs().max()) for g in g_theirs))  # forward KL's exp(-h) makes large gradients
    for a, b in zip(g_ours, g_theirs):
        assert float((a - b).abs().max()) <= 1e-5 * scale


def roles(stats, ref_chosen, ref_rejected):
    policy = methods.BatchLogps(chosen=stats["chosen"], rejected=stats["rejected"])
    reference = methods.BatchLogps(chosen=methods.SeqLogps(ref_chosen, stats["chosen"].n_tokens),
                                   rejected=methods.SeqLogps(ref_rejected, stats["rejected"].n_tokens))
    return policy, reference


@pytest.mark.parametrize("name,params,trl", DPO_FAMILY, ids=[f"{n}-{'-'.join(map(str, p.values()))}"
                                                             for n, p, _ in DPO_FAMILY])
def test_dpo_family_matches_trl(tok, model, name, params, trl, tmp_path, logps):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), bf16=False, precompute_ref_log_probs=True, report_to=[], use_cpu=True,
                     per_device_train_batch_size=4, disable_tqdm=True, **({"beta": 0.1} | trl))
    trainer = DPOTrainer(model=model, args=args, train_dataset=conversational(ROWS), processing_class=tok)
    batch = pad_batch(PAIRS, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id)
    theirs = trainer._compute_loss(trainer.model, {
        "input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "completion_mask": batch.completion_mask,
        "ref_chosen_logps": REF_CHOSEN, "ref_rejected_logps": REF_REJECTED}, return_outputs=False)
    method = methods.build_method(name, **params)
    policy, reference = roles(logps(trainer.model, batch, method.statistics), REF_CHOSEN, REF_REJECTED)
    if method.initial_state() is None:
        ours = method.loss(policy, reference).total()
    else:  # BCO with a settled shift of 0: TRL's bco_pair keeps no running mean
        ours = method.loss(policy, reference, {"delta": torch.zeros((), dtype=torch.float64),
                                               "count": torch.tensor(float("inf"), dtype=torch.float64)}).total()
    assert_same(ours, theirs, trainer.model)


def test_ld_dpo_matches_trl(tok, model, tmp_path):
    """LD-DPO's desensitised log-probs: the policy's computed by TRL (``ld_alpha``), the reference's given to it
    precomputed, combined here by hand from the reference's per-token log-probs (TRL's own reference pass runs
    through accelerate's evaluation wrapper, whose log-probs differ from the unwrapped model's by up to 1e-3)."""
    from trl import DPOConfig, DPOTrainer

    reference_model, alpha = copy.deepcopy(model), 0.4
    with torch.no_grad():  # the policy moves away from the reference so that the log-ratios are not zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = pad_batch(PAIRS, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id)
    with torch.no_grad():
        reference = methods.BatchLogps(**sequence_logps(reference_model, batch, statistics={"tokens"}))
    by_hand = {role: [] for role in ("chosen", "rejected")}
    for i in range(3):
        shared = int(min(reference.chosen.n_tokens[i], reference.rejected.n_tokens[i]))
        for role in by_hand:
            tokens = reference[role].tokens[i, : int(reference[role].n_tokens[i])].tolist()
            by_hand[role].append(sum(tokens[:shared]) + alpha * sum(tokens[shared:]))
    args = DPOConfig(output_dir=str(tmp_path), bf16=False, ld_alpha=alpha, beta=0.1, precompute_ref_log_probs=True, report_to=[],
                     use_cpu=True, per_device_train_batch_size=4, disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=conversational(ROWS), processing_class=tok)
    theirs = trainer._compute_loss(trainer.model, {
        "input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "completion_mask": batch.completion_mask,
        "ref_chosen_logps": torch.tensor(by_hand["chosen"]), "ref_rejected_logps": torch.tensor(by_hand["rejected"])},
        return_outputs=False)
    policy = methods.BatchLogps(**sequence_logps(trainer.model, batch, statistics={"tokens"}))
    ours = methods.build_method("ld_dpo", beta=0.1, alpha=alpha).loss(policy, reference).total()
    assert_same(ours, theirs, trainer.model)


CPO_FAMILY = [  # prefbench method and params, TRL CPOConfig settings, whether TRL averages the log-probs
    ("simpo", {"beta": 2.0, "gamma": 1.0}, {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 0.0}, True),
    ("alphapo", {"beta": 2.0, "gamma": 1.0, "alpha": 0.25},
     {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0, "alpha": 0.25, "cpo_alpha": 0.0}, True),
    ("cpo", {"beta": 0.1, "alpha": 1.0}, {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0}, False),
    ("slic", {"beta": 1.0, "lam": 0.1}, {"loss_type": "hinge", "beta": 1.0, "cpo_alpha": 0.1}, False),
]


@pytest.mark.parametrize("name,params,trl,average", CPO_FAMILY, ids=[c[0] for c in CPO_FAMILY])
def test_cpo_family_matches_trl(tok, model, name, params, trl, average, tmp_path, logps):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(output_dir=str(tmp_path), bf16=False, report_to=[], use_cpu=True, max_length=64, disable_tqdm=True, **trl)
    trainer = CPOTrainer(model=model, args=args, train_dataset=conversational(ROWS), processing_class=tok)
    batch = pad_batch(PAIRS, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id)
    stats = logps(trainer.model, batch)
    stat = "mean" if average else "sum"
    losses, *_ = trainer.cpo_loss(getattr(stats["chosen"], stat), getattr(stats["rejected"], stat))
    chosen = pad_batch(PAIRS, [0, 1, 2], ("chosen",), tok.pad_token_id)  # TRL's NLL: cross-entropy, prompt masked
    labels = chosen.input_ids.masked_fill(chosen.completion_mask == 0, -100)
    nll = trainer.model(input_ids=chosen.input_ids, attention_mask=chosen.attention_mask, labels=labels).loss
    theirs = losses.mean() + trainer.cpo_alpha * nll
    ours = methods.build_method(name, **params).loss(methods.BatchLogps(chosen=stats["chosen"],
                                                                       rejected=stats["rejected"]), None).total()
    assert_same(ours, theirs, trainer.model)


def test_orpo_with_the_prompt_in_its_nll_matches_trls_whole_loss(tok, model, tmp_path, logps):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(output_dir=str(tmp_path), bf16=False, beta=0.25, report_to=[], use_cpu=True, max_length=64, disable_tqdm=True)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=conversational(ROWS), processing_class=tok)
    batch = pad_batch(PAIRS, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id)
    labels = batch.input_ids.masked_fill(batch.completion_mask == 0, -100)
    inputs = {f"{role}_{key}": value[rows] for role, rows in batch.slices.items()
              for key, value in (("input_ids", batch.input_ids), ("attention_mask", batch.attention_mask),
                                 ("labels", labels))}
    theirs, _ = trainer.get_batch_loss_metrics(trainer.model, inputs)
    method = methods.build_method("orpo", lam=0.25, nll="sequence")
    stats = logps(trainer.model, batch, method.statistics)
    ours = method.loss(methods.BatchLogps(chosen=stats["chosen"], rejected=stats["rejected"]), None).total()
    assert_same(ours, theirs, trainer.model)
    completion = methods.build_method("orpo", lam=0.25).loss(methods.BatchLogps(**stats), None).total()
    assert abs(float(completion) - float(theirs)) > 1e-3  # the scopes differ on these prompts


def test_tdpo_matches_the_official_formulas(tok, model):
    """``_tdpo_get_batch_logps`` and ``tdpo_loss`` of github.com/Vance0124/Token-level-Direct-Preference-Optimization,
    written out on full logits: per-position KL(ref || policy) and log-ratio sums over the completion tokens."""
    import torch.nn.functional as F

    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = pad_batch(PAIRS, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id)
    mask = batch.completion_mask[:, 1:].float()
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    with torch.no_grad():
        ref_logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    vocab_logps, ref_ps = logits.log_softmax(-1), ref_logits.softmax(-1)
    position_kl = (ref_ps * (ref_ps.log() - vocab_logps)).sum(-1)
    labels = batch.input_ids[:, 1:, None]
    margin = (vocab_logps.gather(2, labels)[..., 0] - ref_logits.log_softmax(-1).gather(2, labels)[..., 0])
    margin, kl = (margin * mask).sum(-1), (position_kl * mask).sum(-1)
    c, r = batch.slices["chosen"], batch.slices["rejected"]
    beta, alpha = 0.1, 0.5
    with torch.no_grad():
        ref_stats = sequence_logps(reference, batch)
    for version in (1, 2):
        chosen_kl = kl[c] if version == 1 else kl[c].detach()
        penalty = (kl[r] - chosen_kl) * (1 if version == 1 else alpha)
        theirs = -F.logsigmoid(beta * ((margin[c] - margin[r]) - penalty)).mean()
        method = methods.build_method("tdpo", beta=beta, alpha=alpha, version=version)
        with packed_attention(model):  # the policy padding-free, the reference in length groups
            stats = sequence_logps(model, batch, statistics=method.statistics, reference=reference)
        ours = method.loss(methods.BatchLogps(**stats), methods.BatchLogps(**ref_stats)).total()
        assert_same(ours, theirs, model)
