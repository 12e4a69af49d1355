"""GRPO and RLOO against TRL 1.16's own loss computations (``GRPOTrainer._compute_loss``,
``RLOOTrainer._compute_loss``) on the same model, prompts, completions, judge scores and reference log-probs, loss
and gradient to 1e-5. TRL computes its advantages while generating; they are given to it here by TRL's own
formulas (``_generate_and_score_completions``), while prefbench's methods compute theirs from the scores. The
``reused`` cases give both a pi_old away from the policy (a rollout's later update, ``updates_per_rollout`` > 1):
TRL's ``old_per_token_logps`` / ``old_logps``, prefbench's ``SeqLogps.old``; the ratios then leave the clip range."""
import copy
import dataclasses

import pytest
import torch
from datasets import Dataset

from prefbench import methods
from prefbench.data.views import View, pad_batch
from prefbench.model.logprobs import sequence_logps
from tests.test_trl_parity import model, tok  # noqa: F401
from tests.test_trl_parity_family import assert_same

PROMPTS = [[5, 6, 7], [20, 21]]
COMPLETIONS = [[8, 9, 10, 11], [12, 13], [8, 14], [30, 31, 32], [40, 41], [42], [43, 44, 45], [46, 47]]
SCORES = [1.0, 0.0, 0.5, 0.25, 2.0, -1.0, 0.0, 3.0]
K = 4


def samples_view():
    examples = [{"samples": (PROMPTS[i // K], c)} for i, c in enumerate(COMPLETIONS)]
    return View("online", examples, scores={"samples": SCORES})


def trl_inputs(pad_id):
    width = max(map(len, COMPLETIONS))
    prompts = [PROMPTS[i // K] for i in range(len(COMPLETIONS))]
    pw = max(map(len, prompts))
    return {
        "prompt_ids": torch.tensor([[pad_id] * (pw - len(p)) + p for p in prompts]),
        "prompt_mask": torch.tensor([[0] * (pw - len(p)) + [1] * len(p) for p in prompts]),
        "completion_ids": torch.tensor([c + [pad_id] * (width - len(c)) for c in COMPLETIONS]),
        "completion_mask": torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in COMPLETIONS]),
    }


def stats(policy_model, reference_model, pad_id, statistics):
    batch = pad_batch(samples_view(), list(range(len(COMPLETIONS))), ("samples",), pad_id)
    policy = sequence_logps(policy_model, batch, statistics=statistics)["samples"]
    with torch.no_grad():
        reference = sequence_logps(reference_model, batch, statistics={"tokens"})["samples"]
    score = torch.tensor(SCORES)
    return (methods.BatchLogps(samples=methods.SeqLogps(policy.sum, policy.n_tokens, policy.tokens, score)),
            methods.BatchLogps(samples=reference))


def away(logps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """pi_old's log-probs: the policy's, detached and moved by up to +-0.5 a token (ratios of 0.6 to 1.6)."""
    g = torch.Generator().manual_seed(3)
    moved = logps.detach() + (torch.rand(logps.shape, generator=g) - 0.5)
    return moved * mask if mask is not None else moved


def moved(model, path):
    """The reference (a copy of ``model``), and the path of the policy: ``model`` moved away from it and saved, since
    TRL builds its own reference model from the policy's path when beta > 0 (its log-probs are given here)."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    return reference, str(path)


@pytest.mark.parametrize("loss_type,scale,correction,reused", [
    ("grpo", "group", False, False), ("dr_grpo", "none", False, False), ("grpo", "none", False, False),
    ("grpo", "group", True, False), ("grpo", "group", False, True), ("dr_grpo", "none", True, True)])
def test_grpo_matches_trl(tok, model, tmp_path, loss_type, scale, correction, reused):
    from trl import GRPOConfig, GRPOTrainer

    reference, policy_path = moved(model, tmp_path / "policy")
    args = GRPOConfig(output_dir=str(tmp_path), beta=0.04, num_generations=K, per_device_train_batch_size=K * 2,
                      loss_type=loss_type, scale_rewards=scale, use_bias_correction_kl=correction,
                      max_completion_length=6, report_to=[], use_cpu=True, bf16=False,
                      disable_tqdm=True)
    trainer = GRPOTrainer(model=policy_path, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_list([{"prompt": "a"}] * 8), processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1
    policy, ref = stats(trainer.model, reference, tok.pad_token_id, frozenset({"tokens"}))
    scores = torch.tensor(SCORES).view(-1, K)
    adv = scores - scores.mean(1, keepdim=True)
    if scale == "group":
        adv = adv / (scores.std(1, keepdim=True) + 1e-4)
    inputs = trl_inputs(tok.pad_token_id) | {"advantages": adv.reshape(-1), "ref_per_token_logps": ref.samples.tokens}
    if reused:
        s = policy.samples
        old = away(s.tokens, s.mask)
        policy = methods.BatchLogps(samples=dataclasses.replace(s, old=dataclasses.replace(s.detached(), tokens=old)))
        inputs["old_per_token_logps"] = old
    theirs = trainer._compute_loss(trainer.model, inputs)
    method = methods.build_method("grpo", beta=0.04, loss_type=loss_type, scale_rewards=scale == "group",
                                  max_completion_length=6, kl_correction=correction)
    out = method.loss(policy, ref)
    assert_same(out.total(), theirs, trainer.model)
    assert (float(out.metrics["online/clip_fraction"]) > 0) == reused


@pytest.mark.parametrize("normalize,reused", [(False, False), (True, False), (False, True), (True, True)])
def test_rloo_matches_trl(tok, model, tmp_path, normalize, reused):
    from trl import RLOOConfig, RLOOTrainer

    reference, policy_path = moved(model, tmp_path / "policy")
    args = RLOOConfig(output_dir=str(tmp_path), beta=0.05, num_generations=K, per_device_train_batch_size=K * 2,
                      normalize_advantages=normalize, max_completion_length=6, report_to=[], use_cpu=True, bf16=False,
                      disable_tqdm=True)
    trainer = RLOOTrainer(model=policy_path, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_list([{"prompt": "a"}] * 8), processing_class=tok)
    policy, ref = stats(trainer.model, reference, tok.pad_token_id, frozenset())
    old = away(policy.samples.sum) if reused else policy.samples.sum.detach()
    if reused:
        s = policy.samples
        policy = methods.BatchLogps(samples=dataclasses.replace(s, old=dataclasses.replace(s.detached(), sum=old)))
    rewards = (torch.tensor(SCORES) - 0.05 * (old - ref.samples.sum)).view(-1, K)  # TRL: KL in the reward
    baselines = (rewards.sum(1, keepdim=True) - rewards) / (K - 1)
    adv = (rewards - baselines).reshape(-1)
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + 1e-4)
    theirs = trainer._compute_loss(trainer.model, trl_inputs(tok.pad_token_id) | {"advantages": adv, "old_logps": old})
    out = methods.build_method("rloo", beta=0.05, normalize_advantages=normalize).loss(policy, ref)
    assert_same(out.total(), theirs, trainer.model)
    assert (float(out.metrics["online/clip_fraction"]) > 0) == reused
