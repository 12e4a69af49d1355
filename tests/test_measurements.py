"""The evaluation measures what it says ("the measurements are sound"): the policy's and the
anchor's samples come from independent streams, a model's own generation_config cannot change the
samples, the KL is scored under the distribution the samples were drawn from (with a CI over prompts),
and the log-prob dynamics start at the init model (step 0)."""
import json
import shutil

import pytest
import torch
import transformers

from prefbench.job.config import compose_config
from prefbench.data.views import View, build_view, pad_batch
from prefbench.eval import metrics as em
from prefbench.eval.evaluate import evaluate, generate
from prefbench.eval.judges import make_judging
from prefbench.eval.spec import EvalSpec, SamplingSpec
from prefbench.job.pipeline import logprob_probe, prepare
from prefbench.model.logprobs import score_view, sequence_logps
from prefbench.model.models import load_model
from prefbench.model.packing import packed_attention
from tests.conftest import SMOKE, prefbench, run_dir


@pytest.fixture()
def group(shared_cache):
    return prepare(compose_config(SMOKE + [f"cache_dir={shared_cache}"]))


def test_policy_and_anchor_draw_independent_streams(group, shared_cache, tmp_path):
    # a fresh anchor-sample cache (stages copied), so the one anchor file there is this evaluation's
    assert group.sft_stage().exists()
    shutil.copytree(shared_cache, tmp_path / "cache", ignore=shutil.ignore_patterns("anchor_samples", "*.lock"))
    cfg = compose_config(SMOKE + [f"cache_dir={tmp_path / 'cache'}", "eval.samples_per_prompt=4"])
    group = prepare(cfg)
    twin = load_model(group.sft_stage())  # the policy is an identical copy of the anchor
    spec, judging = EvalSpec.from_config(cfg), make_judging(cfg, group)
    first = evaluate(spec, group, twin, tmp_path / "a", judging)
    (anchor_file,) = (tmp_path / "cache" / "anchor_samples").glob(f"{group.sft_stage().name}-*.json")
    anchor = [group.tokenizer.decode(c, skip_special_tokens=True) for s in json.loads(anchor_file.read_text()) for c in s]
    policy = [json.loads(line)["response"] for line in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert len(policy) == len(anchor) == 8 * 4
    same = sum(p == a for p, a in zip(policy, anchor))
    assert same < len(policy) / 2, f"{same}/{len(policy)} policy samples equal the anchor's"
    # the same seed reproduces the same samples; the identical model has KL 0, with a CI around it
    evaluate(spec, group, twin, tmp_path / "b", judging)
    assert (tmp_path / "b" / "samples.jsonl").read_text() == (tmp_path / "a" / "samples.jsonl").read_text()
    assert first["eval/kl_ci_low"] == first["eval/kl"] == first["eval/kl_ci_high"] == 0.0


def test_a_models_generation_config_does_not_change_the_samples(group, tmp_path):
    sampling = SamplingSpec(samples_per_prompt=4, max_new_tokens=24)
    plain, tuned = tmp_path / "plain", tmp_path / "tuned"
    for path in (plain, tuned):
        shutil.copytree(group.sft_stage(), path, ignore=shutil.ignore_patterns("checkpoint", "*.json.lock"))
    file = tuned / "generation_config.json"
    settings = json.loads(file.read_text()) if file.exists() else {}
    settings |= {"repetition_penalty": 1.8, "no_repeat_ngram_size": 2, "top_k": 3, "min_p": 0.3,
                 "suppress_tokens": [5, 6, 7]}  # what a hub model's generation_config.json may carry
    file.write_text(json.dumps(settings))
    assert load_model(tuned).generation_config.repetition_penalty == 1.8  # the file is read
    prompts = list(group.data.eval["prompt_ids"])
    a, b = (generate(load_model(p), group.tokenizer, prompts, sampling, seed=0) for p in (plain, tuned))
    assert a == b
    assert a != generate(load_model(plain), group.tokenizer, prompts, sampling, seed=1)  # the seed does matter


def test_temperature_scoring_matches_log_softmax_of_scaled_logits():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    examples = [([5, 6, 7], [8, 9, 10, 11]), ([5], [12, 13]), ([20, 21, 22, 23], [30])]
    view = View("sft", [{"chosen": e} for e in examples])

    def by_hand(temperature):
        out = []
        for p, c in examples:
            logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1].double()
            out.append(torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(c)[:, None]).sum())
        return torch.stack(out).float()

    for t in (0.5, 0.7, 1.0, 1.5):
        got = score_view(model, view, 0, 8, "cpu", temperature=t)["chosen.sum"]
        torch.testing.assert_close(got, by_hand(t), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(by_hand(0.7), by_hand(1.0))
    # the trainer's path (no temperature) is exactly temperature 1, packed or in length groups
    batch = pad_batch(view, [0, 1, 2], ("chosen",), 0)
    for packed in (True, False):
        with torch.no_grad(), packed_attention(model, enabled=packed):
            default, one = sequence_logps(model, batch)["chosen"].sum, sequence_logps(model, batch, 1.0)["chosen"].sum
        assert torch.equal(default, one)


def test_kl_ci_resamples_prompt_means():
    per_prompt = em.prompt_means([1.0, 3.0, 2.0, 2.0, 10.0, 0.0], 2)
    assert per_prompt.tolist() == [2.0, 2.0, 5.0]
    low, high = em.bootstrap_ci(per_prompt, 2000, seed=0)
    assert 2.0 <= low < 3.0 < high <= 5.0  # the mean 3 lies inside; the bounds are prompt means' means
    with pytest.raises(ValueError, match="not 2 per prompt"):
        em.prompt_means([1.0, 2.0, 3.0], 2)


def test_logprob_dynamics_start_at_the_init_model(group, shared_cache, tmp_path):
    prefbench("run", "method=dpo", f"results_dir={tmp_path}", f"cache_dir={shared_cache}", *SMOKE)
    rows = [json.loads(line) for line in (run_dir(tmp_path / "runs", "reviews-tiny-xs-dpo-s0") / "metrics.jsonl")
            .read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert set(rows[0]) == {"step", "probe/logps_chosen", "probe/logps_rejected"}
    view = build_view("paired", group.data.kind, group.data.eval, int(group.cfg.seed))
    expected = logprob_probe(view, group.pad_id)(load_model(group.sft_stage()))  # DPO starts from the SFT stage
    assert rows[0] == pytest.approx({"step": 0, **expected}, rel=1e-5)
    assert rows[1]["probe/logps_chosen"] != rows[0]["probe/logps_chosen"]  # training moved it


def test_every_eval_setting_reaches_the_spec():
    """EvalSpec reads each key of conf/eval/default.yaml: a new key must reach the spec (or this fails)."""
    from omegaconf import OmegaConf

    from prefbench import CONF_DIR
    changed = {"split": "val", "samples_per_prompt": 3, "temperature": 0.7, "top_p": 1.0, "batch_size": 5,
               "bootstrap": 7, "beta": 0.3, "diversity": False, "curve.fractions": [0.5], "curve.samples_per_prompt": 3,
               "best_of_n": 8}
    yaml = OmegaConf.load(CONF_DIR / "eval" / "default.yaml")
    keys = {f"{k}.{sub}" if isinstance(v, dict) else k: None
            for k, v in OmegaConf.to_container(yaml).items() for sub in (v if isinstance(v, dict) else [None])}
    assert set(keys) == set(changed)
    spec = EvalSpec.from_config(compose_config(SMOKE + [f"eval.{k}={v}" for k, v in changed.items()] + ["seed=4"]))
    s = spec.sampling
    assert (spec.split, s.samples_per_prompt, s.temperature, s.top_p, s.batch_size) == ("val", 3, 0.7, 1.0, 5)
    assert (spec.bootstrap, spec.beta, spec.diversity, spec.curve_fractions) == (7, 0.3, False, (0.5,))
    assert (spec.curve_samples_per_prompt, spec.best_of_n, spec.seed) == (3, 8, 4)


def test_the_anchors_judged_scores_and_pair_log_probs_are_computed_once_per_group(group, shared_cache, tmp_path):
    """The second run of a group scores only its own samples: the judge's scores of the anchor's samples and of
    the chosen replies, and the anchor's log-probs of the held-out pairs, come from the cache, and every
    evaluation number equals the first run's (which computed them)."""
    shutil.copytree(shared_cache, tmp_path / "cache",
                    ignore=shutil.ignore_patterns("anchor_scores", "anchor_pair_logps", "*.lock"))
    cfg = compose_config(SMOKE + [f"cache_dir={tmp_path / 'cache'}", "eval.best_of_n=0"])
    group = prepare(cfg)
    spec, judging = EvalSpec.from_config(cfg), make_judging(cfg, group)
    scored = []
    real_score = judging.judge.score
    judging.judge.score = lambda prompts, texts: scored.append(len(texts)) or real_score(prompts, texts)
    policy = load_model(group.sft_stage())
    first = evaluate(spec, group, policy, tmp_path / "a", judging)
    built, scored[:] = list(scored), []
    second = evaluate(spec, group, policy, tmp_path / "b", judging)
    n_samples = first["eval/n_prompts"] * first["eval/samples_per_prompt"]
    assert built == [n_samples, n_samples, first["eval/n_prompts"]] and scored == [n_samples]
    assert {k: v for k, v in first.items() if not k.startswith("cost/")} == \
        {k: v for k, v in second.items() if not k.startswith("cost/")}
    (pair_file,) = (tmp_path / "cache" / "anchor_pair_logps").glob(f"{group.sft_stage().name}-*.json")
    anchor = load_model(group.sft_stage())
    live = score_view(anchor, build_view("paired", "paired", group.data.eval, 0), group.pad_id, 64, "cpu")
    cached = json.loads(pair_file.read_text())
    assert torch.equal(torch.tensor(cached["chosen.sum"], dtype=torch.float32), live["chosen.sum"])
    assert len(list((tmp_path / "cache" / "anchor_scores").glob("*.json"))) == 1
