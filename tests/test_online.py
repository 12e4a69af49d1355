"""The online methods (GRPO, RLOO, online DPO): their losses against hand-computed values, their training on a tiny
bandit through the real rollout (sampling, judge, reference), and an exact resume."""
import json
import math
import sys

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from prefbench import methods
from prefbench.data.views import build_view
from prefbench.eval.rollout import Rollout
from prefbench.eval.sampling import generate
from prefbench.eval.spec import SamplingSpec
from prefbench.io.errors import UserError
from prefbench.train.trainer import Callbacks, Sources, TrainSpec, train
from prefbench.methods import BatchLogps, SeqLogps

SCORES = [1.0, 0.0, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0]  # two prompts, four samples each
TOKENS = [[-1.0, -2.0], [-0.5, -0.5, -1.0], [-2.0], [-1.0, -1.0], [-0.2, -0.3], [-3.0], [-1.5, -0.5], [-0.1]]
REF = [[-1.2, -1.8], [-0.5, -0.7, -1.0], [-1.5], [-1.0, -1.3], [-0.4, -0.3], [-2.0], [-1.0, -0.5], [-0.3]]


def seqs(rows, scores=None):
    width = max(map(len, rows))
    t = torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float64)
    return SeqLogps(t.sum(1), torch.tensor([len(r) for r in rows]), t,
                    None if scores is None else torch.tensor(scores, dtype=torch.float64))


def std(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def k3(p, r):
    return math.exp(r - p) - (r - p) - 1


@pytest.mark.parametrize("loss_type,scale", [("grpo", True), ("dr_grpo", False), ("grpo", False)])
def test_grpo_is_the_group_relative_objective(loss_type, scale):
    beta, cap = 0.04, 5
    expected, total, tokens = [], 0.0, 0
    for g in range(2):
        group = SCORES[4 * g: 4 * g + 4]
        for j in range(4):
            i, mean = 4 * g + j, sum(group) / 4
            adv = (group[j] - mean) / (std(group) + 1e-4 if scale else 1)
            per_token = [-adv + beta * k3(p, r) for p, r in zip(TOKENS[i], REF[i])]  # rho = 1 at pi_old = pi
            expected.append(sum(per_token) / len(per_token))
            total, tokens = total + sum(per_token), tokens + len(per_token)
    want = sum(expected) / len(expected) if loss_type == "grpo" else total / (8 * cap)
    method = methods.build_method("grpo", beta=beta, loss_type=loss_type, scale_rewards=scale,
                                  max_completion_length=cap)
    out = method.loss(BatchLogps(samples=seqs(TOKENS, SCORES)), BatchLogps(samples=seqs(REF)))
    assert float(out.total()) == pytest.approx(want, abs=1e-12)


def test_grpo_gradient_is_the_advantage_times_the_score_function():
    """At pi_old = pi the ratio's gradient is grad log pi: d loss / d log pi(y_t) = -A / n(y) (+ the KL's)."""
    policy = seqs(TOKENS, SCORES)
    leaf = policy.tokens.clone().requires_grad_(True)
    policy = SeqLogps(policy.sum, policy.n_tokens, leaf, policy.score)
    reference = BatchLogps(samples=seqs(REF))
    methods.build_method("grpo", beta=0.0).loss(BatchLogps(samples=policy), reference).total().backward()
    group = SCORES[:4]
    adv0 = (group[0] - sum(group) / 4) / (std(group) + 1e-4)
    assert float(leaf.grad[0, 0]) == pytest.approx(-adv0 / 2 / 8, abs=1e-12)


def test_rloo_uses_the_leave_one_out_baseline_of_the_kl_penalised_reward():
    beta = 0.05
    sums, ref_sums = [sum(t) for t in TOKENS], [sum(t) for t in REF]
    rewards = [SCORES[i] - beta * (sums[i] - ref_sums[i]) for i in range(8)]
    expected = []
    for i in range(8):
        g = i // 4 * 4
        others = [rewards[j] for j in range(g, g + 4) if j != i]
        expected.append(-(rewards[i] - sum(others) / 3))
    method = methods.build_method("rloo", beta=beta)
    out = method.loss(BatchLogps(samples=seqs(TOKENS, SCORES)), BatchLogps(samples=seqs(REF)))
    assert float(out.total()) == pytest.approx(sum(expected) / 8, abs=1e-12)


def test_online_dpo_trains_the_judges_pick_and_skips_ties():
    scores = [1.0, 0.0, 0.5, 0.5, -1.0, 2.0, 0.0, 0.0]  # pairs: first wins, tie, second wins, tie
    sums, ref_sums = [sum(t) for t in TOKENS], [sum(t) for t in REF]
    h = [sums[i] - ref_sums[i] for i in range(8)]
    expected = [math.log1p(math.exp(-0.1 * (h[0] - h[1]))), math.log1p(math.exp(-0.1 * (h[5] - h[4])))]
    reference = BatchLogps(samples=seqs(REF))
    out = methods.build_method("online_dpo").loss(BatchLogps(samples=seqs(TOKENS, scores)), reference)
    assert float(out.total()) == pytest.approx(sum(expected) / 2, abs=1e-12)
    tied = methods.build_method("online_dpo").loss(BatchLogps(samples=seqs(TOKENS, [0.0] * 8)), reference)
    assert float(tied.total()) == 0.0


# --- a bandit: the reward is the share of "a" tokens in the completion ---------------------------------------------

WORDS = ["<pad>", "<eos>", "a", "b", "c", "x", "y"]


@pytest.fixture(scope="module")
def tok():
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>")


def bandit_model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                        pad_token_id=0, eos_token_id=1))


class ShareOfA:
    def score(self, prompts, completions):
        return [c.split().count("a") / max(1, len(c.split())) for c in completions]


PROMPTS = ["x", "y", "x y", "y x"]
SAMPLING = SamplingSpec(temperature=1.0, samples_per_prompt=4, batch_size=8, max_new_tokens=6)


def expected_reward(model, tok):
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    samples = generate(model, tok, ids, SAMPLING, seed=123, stream="measure", k=32)
    texts = [tok.decode(c, skip_special_tokens=True) for s in samples for c in s]
    return sum(ShareOfA().score(None, texts)) / len(texts)


def bandit(method, tok, out_dir, steps=30, curve=None, **kw):
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    data = Dataset.from_dict({"prompt_ids": ids, "chosen_ids": [[2]] * 4, "rejected_ids": [[3]] * 4})
    view = build_view("online", "paired", data, 0)
    reference = bandit_model()
    rollout = Rollout(method, view, {tuple(i): p for i, p in zip(ids, PROMPTS)}, tok, ShareOfA(), SAMPLING,
                      reference, seed=0, device="cpu")
    spec = TrainSpec(steps=steps, batch_size=4, lr=3e-2, warmup_ratio=0.0, scheduler="constant", log_every=1,
                     progress=False, **kw)
    model = bandit_model()
    stats = train(model, method, view, spec, out_dir, tok.pad_token_id, Sources(rollout=rollout), Callbacks(curve=curve))
    return model, stats, rollout


@pytest.mark.parametrize("name", ["grpo", "rloo", "online_dpo", "ppo"])
def test_each_online_method_raises_the_expected_reward_on_a_bandit(name, tok, tmp_path):
    before = expected_reward(bandit_model(), tok)
    model, stats, rollout = bandit(methods.build_method(name), tok, tmp_path)
    after = expected_reward(model, tok)
    assert before < 0.2 and after > 0.6, (before, after)  # 0.14 -> 0.98-1.0 when measured
    assert rollout.generated_tokens > 0 and stats["train_tokens"] > 0


def straight_and_resumed(method, tok, tmp_path, stop=2, every=2):
    """The same 4-step run twice: straight, and stopped at step ``stop`` (checkpoints every ``every`` steps)
    then resumed from its step-2 checkpoint."""
    class Stop:
        def steps(self, total):
            return {stop}

        def __call__(self, model, step):
            raise RuntimeError("stopped")

    straight, _, counted = bandit(method, tok, tmp_path / "straight", steps=4, checkpoint_every=every)
    with pytest.raises(RuntimeError, match="stopped"):
        bandit(method, tok, tmp_path / "resumed", steps=4, checkpoint_every=every, curve=Stop())
    resumed, stats, recounted = bandit(method, tok, tmp_path / "resumed", steps=4, checkpoint_every=every)
    assert stats["resumed_from_step"] == 2
    # the rollouts' cost (cost/rollout_flops) counts all 4 steps once, those before the stop from the checkpoint
    for key in ("generated_tokens", "prompt_tokens", "reference_tokens"):
        assert getattr(recounted, key) == getattr(counted, key) > 0, key
    return straight, resumed


def test_an_online_run_resumes_exactly_sampling_included(tok, tmp_path):
    straight, resumed = straight_and_resumed(methods.build_method("grpo"), tok, tmp_path)
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))


class Counted(Rollout):
    def __call__(self, model, indices, step):
        self.steps = getattr(self, "steps", []) + [step]
        return super().__call__(model, indices, step)


@pytest.mark.parametrize("name", ["grpo", "rloo", "ppo"])
def test_a_rollout_serves_updates_per_rollout_steps_with_pi_old_from_its_first(name, tok, tmp_path, monkeypatch):
    """updates_per_rollout=2: rollouts at steps 0 and 2 only; the first update of each is on-policy (nothing
    clipped), the second sees pi_old from the first, and a fast-moving policy gets clipped there."""
    monkeypatch.setattr(sys.modules[__name__], "Rollout", Counted)
    _, stats, rollout = bandit(methods.build_method(name, updates_per_rollout=2), tok, tmp_path, steps=4)
    assert rollout.steps == [0, 2]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    clipped = [r["online/clip_fraction"] for r in rows]
    assert clipped[0] == clipped[2] == 0 and max(clipped[1], clipped[3]) > 0, clipped


def test_a_reused_rollout_resumes_exactly_from_a_rollout_boundary(tok, tmp_path):
    """checkpoint_every=1 with two updates per rollout checkpoints at step 2, not 3 (mid-rollout: a resume there
    would draw a fresh rollout where the straight run reuses one); stopped at 3, the run resumes from 2."""
    straight, resumed = straight_and_resumed(methods.build_method("grpo", updates_per_rollout=2), tok, tmp_path,
                                             stop=3, every=1)
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))


def test_an_online_method_refuses_a_sampling_temperature_its_log_probs_do_not_use():
    from prefbench.job.config import compose_config, validate

    validate(compose_config(["method=grpo", "model=tiny-xs"]))
    validate(compose_config(["method=dpo", "model=tiny-xs", "eval.temperature=0.7"]))  # offline: samples only for eval
    with pytest.raises(UserError, match=r"method=grpo trains on its samples with log-probs at temperature 1, so it "
                                        r"samples at eval.temperature=1 too \(got 0.7\)"):
        validate(compose_config(["method=grpo", "model=tiny-xs", "eval.temperature=0.7"]))


@pytest.mark.parametrize("method", ["online_dpo", "tdpo"])
def test_a_lora_run_keeps_its_reference_beside_the_policy(method, tmp_path, shared_cache):
    """Online DPO scores its samples, and TDPO its vocabulary KL, with the reference running beside a LoRA policy:
    the start checkpoint under the adapters."""
    import json as _json

    from tests.conftest import SMOKE, prefbench

    prefbench("run", f"method={method}", "+model.lora={r: 4, alpha: 8}", "trainer.steps=2", "trainer.checkpoint_every=0",
              f"results_dir={tmp_path}", f"cache_dir={shared_cache}", *[a for a in SMOKE if "trainer.steps" not in a
                                                                       and "checkpoint_every" not in a])
    (summary,) = [_json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/summary.json")]
    assert summary["status"] == "done", summary.get("error")
    assert summary["train/step"] == 2
