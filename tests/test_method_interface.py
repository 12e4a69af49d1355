"""The method interface takes new kinds of method as one-file plugins with no core edit: a token-level loss
(per-token log-probs of policy and reference), a stateful one (state checkpointed with the optimizer), one
with a view of its own, per-example losses reduced by the trainer, and the seam for methods that train on
fresh samples. Each plugin is a real module file, imported the way an entry point would load it."""
import importlib.util
import json
import textwrap

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from prefbench import methods
import prefbench.methods.views
from prefbench.data.views import View, build_view
from prefbench.io.errors import UserError
from prefbench.model.logprobs import score_view
from prefbench.train import refcache
from prefbench.train.batches import forward
from prefbench.train.trainer import Callbacks, Sources, TrainSpec, train
from prefbench.methods import LossOutput, build_method

PAIRS = Dataset.from_dict({"prompt_ids": [[1, 2, 3], [1, 3, 2], [2, 1, 3], [3, 2, 1]],
                           "chosen_ids": [[4, 5, 6], [4, 6], [5, 4, 6, 7], [6, 5]],
                           "rejected_ids": [[7, 8, 9], [8, 7, 9, 10], [9, 8], [10, 9, 8]]})
SPEC = TrainSpec(steps=4, batch_size=2, lr=1e-2, warmup_ratio=0.0, scheduler="constant", log_every=1,
                 progress=False)

TOKEN_DPO = '''
from dataclasses import dataclass
import torch.nn.functional as F
from prefbench.methods import LossOutput, Method, register

@register
@dataclass
class TokenDPO(Method):
    """DPO written over per-token log-ratios (sum_t [log pi - log pi_ref]); equal to DPO by construction."""
    beta: float = 0.1
    name = "token_dpo"; view = "paired"; needs_reference = True; init = "sft"; statistics = frozenset({"tokens"})

    def loss(self, policy, reference):
        def ratio(role):
            return ((policy[role].tokens - reference[role].tokens) * policy[role].mask).sum(dim=1)
        return LossOutput(-F.logsigmoid(self.beta * (ratio("chosen") - ratio("rejected"))).mean())
'''

RUNNING_MARGIN = '''
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from prefbench.methods import LossOutput, Method, register

@register
@dataclass
class RunningMargin(Method):
    """DPO with the running mean of past margins subtracted (a beta-DPO-style running statistic)."""
    beta: float = 0.1
    name = "running_margin"; view = "paired"; needs_reference = True; init = "sft"

    def initial_state(self):
        return {"mean": torch.zeros(()), "count": torch.zeros(())}

    def loss(self, policy, reference, state):
        margin = (policy.chosen.sum - reference.chosen.sum) - (policy.rejected.sum - reference.rejected.sum)
        count = state["count"] + 1
        mean = state["mean"] + (margin.detach().mean() - state["mean"]) / count
        return LossOutput(-F.logsigmoid(self.beta * (margin - state["mean"])).mean(),
                          state={"mean": mean, "count": count})
'''

TRIPLET = '''
from dataclasses import dataclass
import torch.nn.functional as F
from prefbench.methods import LossOutput, Method, ViewSpec, register, register_view
from prefbench.methods.views import derangement

def build(kind, c, seed):
    p, partner = c["prompt_ids"], derangement(len(c["prompt_ids"]), seed)
    return [{"chosen": (p[i], c["chosen_ids"][i]), "rejected": (p[i], c["rejected_ids"][i]),
             "other": (p[i], c["chosen_ids"][partner[i]])} for i in range(len(p))]

register_view(ViewSpec("triplet", ("chosen", "rejected", "other"), build, margin=("chosen", "rejected")))

@register
@dataclass
class Contrast(Method):
    """DPO plus the chosen response against another prompt's chosen response."""
    beta: float = 0.1
    name = "contrast"; view = "triplet"; needs_reference = True; init = "sft"

    def loss(self, policy, reference):
        def r(role):
            return policy[role].sum - reference[role].sum
        return LossOutput(-F.logsigmoid(self.beta * (r("chosen") - r("rejected"))).mean()
                          - F.logsigmoid(self.beta * (r("chosen") - r("other"))).mean())
'''

PER_EXAMPLE = '''
from dataclasses import dataclass
import torch.nn.functional as F
from prefbench.methods import LossOutput, Method, register

@register
@dataclass
class PerExampleDPO(Method):
    """DPO's per-example losses, reduced by the trainer."""
    beta: float = 0.1
    name = "per_example_dpo"; view = "paired"; needs_reference = True; init = "sft"

    def loss(self, policy, reference):
        logits = (policy.chosen.sum - reference.chosen.sum) - (policy.rejected.sum - reference.rejected.sum)
        return LossOutput(losses=-F.logsigmoid(self.beta * logits))
'''

SCORED = '''
from dataclasses import dataclass
from prefbench.methods import LossOutput, Method, register

@register
@dataclass
class Scored(Method):
    """Raise the mean log-prob of fresh samples in proportion to their judge score."""
    name = "scored"; view = "sft"; needs_reference = False; needs_samples = True

    def loss(self, policy, reference):
        return LossOutput(-(policy.chosen.score * policy.chosen.mean).mean())
'''


@pytest.fixture
def plugin(tmp_path):
    """Load a plugin's source as a module file; the registries are restored afterwards."""
    saved = dict(methods.registry()), dict(methods.views._VIEWS)

    def load(name, source):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        return build_method(name.split("-")[0])

    yield load
    for live, old in zip((methods._REGISTRY, methods.views._VIEWS), saved):
        live.clear()
        live.update(old)


def tiny_model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))


def trained(method, view, out_dir, spec=SPEC, curve=None, rollout=None):
    model = tiny_model()
    ref = refcache.cached(out_dir / "cache", "init", view, tiny_model, 0, 8, "cpu", statistics=method.statistics)[0] \
        if method.needs_reference else None
    stats = train(model, method, view, spec, out_dir, pad_id=0, sources=Sources(ref, rollout=rollout),
                  callbacks=Callbacks(curve=curve))
    return model, stats


def same_weights(a, b, **tol):
    return all(torch.allclose(p, q, **tol) if tol else torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_token_level_statistics_sum_to_the_sequence_ones_and_train_like_dpo(plugin, tmp_path):
    method = plugin("token_dpo", TOKEN_DPO)
    view = build_view("paired", "paired", PAIRS, 0)
    ref = refcache.cached(tmp_path / "cache", "init", view, tiny_model, 0, 8, "cpu", statistics={"tokens"})[0]
    assert not refcache.cached(tmp_path / "cache", "init", view, tiny_model, 0, 8, "cpu")[1]  # own file
    policy, index = forward(tiny_model(), view, [0, 1, 2, 3], 0, "cpu", {"tokens"})
    reference = ref.lookup(index, "cpu")
    for batch in (policy, reference):
        for role in ("chosen", "rejected"):
            s = batch[role]
            assert s.tokens.shape == (4, int(s.n_tokens.max())) and (s.tokens[~s.mask] == 0).all()
            assert torch.allclose(s.tokens.sum(dim=1), s.sum, atol=1e-5)
    assert torch.allclose(policy.chosen.tokens, reference.chosen.tokens, atol=1e-5)  # the same init weights
    plain, _ = forward(tiny_model(), view, [0, 1], 0, "cpu")
    assert plain.chosen.tokens is None  # sequence-level methods pay nothing for it
    token_model, _ = trained(method, view, tmp_path / "token")
    dpo_model, _ = trained(build_method("dpo"), view, tmp_path / "dpo")
    assert same_weights(token_model, dpo_model, atol=1e-5) and not same_weights(token_model, tiny_model())


class StopAt:
    """A curve callback that interrupts training right after the checkpoint of step ``at``."""

    def __init__(self, at):
        self.at = at

    def steps(self, total):
        return {self.at}

    def __call__(self, model, step):
        raise RuntimeError(f"stopped at {step}")


def test_method_state_is_checkpointed_and_restored(plugin, tmp_path):
    method = plugin("running_margin", RUNNING_MARGIN)
    view = build_view("paired", "paired", PAIRS, 0)
    spec = TrainSpec(**{**SPEC.__dict__, "checkpoint_every": 2})
    straight, stats = trained(method, view, tmp_path / "straight", spec)
    assert int(stats["method_state"]["count"]) == 4 and float(stats["method_state"]["mean"]) != 0
    with pytest.raises(RuntimeError, match="stopped at 2"):
        trained(method, view, tmp_path / "resumed", spec, curve=StopAt(2))
    resumed, again = trained(method, view, tmp_path / "resumed", spec)
    assert again["resumed_from_step"] == 2 and int(again["method_state"]["count"]) == 4  # not restarted at 0
    assert torch.equal(again["method_state"]["mean"], stats["method_state"]["mean"])
    assert same_weights(straight, resumed)


def test_a_plugin_view_reaches_the_trainer_cache_and_metrics(plugin, tmp_path):
    method = plugin("contrast", TRIPLET)
    view = build_view("triplet", "paired", PAIRS, 0)
    assert all(set(ex) == {"chosen", "rejected", "other"} for ex in view.examples)
    assert view.n_tokens([0]) == sum(len(p) + len(c) for p, c in view.examples[0].values())  # all three roles
    trained(method, view, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"logps/other", "rewards/other", "rewards/margin", "loss"} <= set(rows[-1])
    unpaired = Dataset.from_dict({"prompt_ids": [[1, 2]], "completion_ids": [[3, 4]], "label": [True]})
    with pytest.raises(UserError, match="the 'triplet' view needs paired data"):
        build_view("triplet", "unpaired", unpaired, 0)
    with pytest.raises(UserError, match="view 'nope' is not registered"):
        build_view("nope", "paired", PAIRS, 0)


def test_per_example_losses_are_reduced_by_the_trainer(plugin, tmp_path):
    method = plugin("per_example_dpo", PER_EXAMPLE)
    view = build_view("paired", "paired", PAIRS, 0)
    per_example, _ = trained(method, view, tmp_path / "per_example")
    dpo, _ = trained(build_method("dpo"), view, tmp_path / "dpo")
    assert same_weights(per_example, dpo)  # the mean of DPO's per-example losses is DPO's loss, bit for bit
    weighted = LossOutput(losses=torch.tensor([1.0, 3.0]), weights=torch.tensor([1.0, 3.0]))
    assert float(weighted.total()) == 2.5  # (1*1 + 3*3) / (1 + 3)
    with pytest.raises(ValueError, match="needs loss or losses"):
        LossOutput().total()


def test_methods_that_train_on_fresh_samples_get_them_from_the_rollout_seam(plugin, tmp_path):
    method = plugin("scored", SCORED)
    prompts = build_view("sft", "paired", PAIRS, 0)
    with pytest.raises(ValueError, match="trains on fresh samples of the policy: train\\(\\) needs a rollout"):
        train(tiny_model(), method, prompts, SPEC, tmp_path / "none", pad_id=0)

    def rollout(score):
        def sample(model, indices, step):  # stands in for generation + judging
            examples = [{"chosen": (prompts.examples[i]["chosen"][0], [5 + step % 3, 6])} for i in indices]
            return View("sft", examples, scores={"chosen": [score] * len(examples)}), None
        return sample

    unjudged, _ = trained(method, prompts, tmp_path / "zero", rollout=rollout(0.0))
    assert same_weights(unjudged, tiny_model())  # a score of 0 gives no gradient: the scores reach the loss
    judged, stats = trained(method, prompts, tmp_path / "one", rollout=rollout(1.0))
    assert not same_weights(judged, tiny_model()) and stats["train_tokens"] == 4 * 2 * (3 + 2)
    after = score_view(judged, View("sft", [{"chosen": ([1, 2, 3], [5, 6])}]), 0, 8, "cpu")["chosen.sum"]
    before = score_view(tiny_model(), View("sft", [{"chosen": ([1, 2, 3], [5, 6])}]), 0, 8, "cpu")["chosen.sum"]
    assert after > before
