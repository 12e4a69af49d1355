"""What keeps a real model's run inside its memory: token-bounded judge forwards and reward-model training,
logit-bounded scoring, the reference pass over the trained rows only, a refusal before a pass that cannot
fit, half-built stages removed, and the libraries' warnings in the run's log instead of the console."""
import copy
import multiprocessing
import warnings

import pytest
import torch
from filelock import FileLock
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from prefbench.data.tasks import get_task
from prefbench.data.tokenizer import train_bpe
from prefbench.data.views import View
from prefbench.eval.reward_model import RewardModelJudge, token_batches, train_bradley_terry
from prefbench.io.errors import UserError
from prefbench.io.stages import build_stage
from prefbench.job.run import warnings_to
from prefbench.model import compute, logprobs
from prefbench.model.logprobs import score_view
from prefbench.train.batches import batch_indices, trained_rows
from prefbench.train.trainer import TrainSpec


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    path = tmp_path_factory.mktemp("rm")
    tok = train_bpe([r["prompt"] + " " + r["completion"] for r in get_task("reviews").corpus(100, 0)], 300)
    torch.manual_seed(0)
    LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_token_batches_keep_every_forward_under_the_budget():
    lengths = [50, 40, 40, 30, 10, 10, 10, 200]
    groups = token_batches(lengths, max_tokens=100, max_rows=3)
    assert [i for g in groups for i in g] == list(range(len(lengths)))  # every row once, in order
    for g in groups:
        assert len(g) <= 3 and (len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 100)
    assert [7] in groups  # a row over the budget goes alone
    assert token_batches([30, 30], max_tokens=100, max_rows=8, texts_per_row=2) == [[0], [1]]


def forwards(judge):
    """The padded (rows, length) of every forward of the judge's model."""
    shapes = []
    judge.model.register_forward_hook(lambda module, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)),
                                      with_kwargs=True)
    return shapes


def test_the_reward_model_scores_in_forwards_of_at_most_max_tokens(tiny_rm):
    prompts = ["Review it."] * 6 + [" ".join(["Review the film and the plot."] * 4)] * 2
    completions = ["a great film.", "a bad film.", "fine", "ok", "great great great film", "bad", "good", "bad"]
    unbounded = RewardModelJudge(str(tiny_rm), batch_size=64, max_tokens=10**6).score(prompts, completions)
    judge = RewardModelJudge(str(tiny_rm), batch_size=64, max_tokens=100)
    shapes = forwards(judge)
    scores = judge.score(prompts, completions)
    assert len(shapes) > 2 and all(rows * length <= 100 for rows, length in shapes), shapes
    assert scores == pytest.approx(unbounded, abs=1e-4)  # the same scores, in the original order


def test_reward_model_training_accumulates_token_bounded_forwards_to_the_same_loss(tiny_rm):
    """A batch split into forwards under ``max_tokens`` (each part's loss weighted by its rows) trains as the
    whole batch in one forward: the same losses along three steps."""
    pairs = [{"prompt": "Review it.", "chosen": "a great film " * (1 + i % 5), "rejected": "bad " * (1 + i % 3)}
             for i in range(12)]
    runs = []
    for max_tokens in (10**6, 120):
        judge = RewardModelJudge(str(tiny_rm), max_tokens=max_tokens)
        shapes = forwards(judge)
        loss = train_bradley_terry(judge, pairs, steps=3, batch_size=6, lr=1e-2, seed=0)["bt_loss_last"]
        runs.append((loss, shapes))
    (whole, one_each), (split, many) = runs
    assert len(many) > len(one_each) == 3 and all(r * n <= 120 for r, n in many)
    assert split == pytest.approx(whole, abs=1e-5)


def test_reward_model_training_that_cannot_fit_is_refused_before_it_starts(tiny_rm, monkeypatch):
    monkeypatch.setattr(compute, "memory_limit_bytes", lambda: compute.resident_bytes() + 2**20)
    judge = RewardModelJudge(str(tiny_rm), max_tokens=10**6)
    before = copy.deepcopy(judge.model.state_dict())
    with pytest.raises(UserError, match=r"the reward model's training needs about .* lower judge.max_tokens"):
        train_bradley_terry(judge, [{"prompt": "p", "chosen": "a", "rejected": "b"}], 2, 2, 1e-2, 0)
    assert all(torch.equal(before[k], v) for k, v in judge.model.state_dict().items())


def test_scoring_a_large_vocabulary_splits_batches_by_logit_bytes(monkeypatch):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    view = View("paired", [{"chosen": ([1, 2, 3], [4, 5, 6, 7]), "rejected": ([1, 2, 3], [8, 9])} for _ in range(6)])
    whole = score_view(model, view, 0, 64, "cpu")
    monkeypatch.setattr(logprobs, "LOGIT_BYTES", 4 * 64 * 12)  # 12 predicted tokens: two examples a forward
    assert [len(b) for b in logprobs._logit_bounded(view, list(range(6)), 64, 64, False)] == [2, 2, 2]
    split = score_view(model, view, 0, 64, "cpu")
    assert all(torch.allclose(whole[k], split[k], atol=1e-5) for k in whole)


@pytest.mark.parametrize("spec", [TrainSpec(steps=5, batch_size=4, grad_accum=2, seed=3),
                                  TrainSpec(epochs=1.5, batch_size=8, seed=1), TrainSpec(steps=3, batch_size=5, shuffle=False)])
@pytest.mark.parametrize("world", [1, 2])
def test_trained_rows_are_the_rows_the_trainer_draws(spec, world):
    n = 40
    steps = spec.steps if not spec.epochs else -(-int(spec.epochs * n) // (spec.batch_size * spec.grad_accum * world))
    drawn = {i for micro in range(steps * spec.grad_accum) for rank in range(world)
             for i in batch_indices(n, spec.batch_size, spec.seed, micro, rank, world, spec.shuffle)}
    assert trained_rows(n, spec, world) == sorted(drawn)


def _hold(lock_path, ready, release):
    with FileLock(lock_path):
        ready.set()
        release.wait(30)


def test_half_built_stages_are_removed_unless_their_builder_is_alive(tmp_path):
    stages = tmp_path / "stages"
    (stages / "bt-abandoned.tmp").mkdir(parents=True)  # what a builder killed by the OOM killer leaves
    (stages / "bt-busy.tmp").mkdir()
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(stages / "bt-busy.lock"), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RuntimeError, match="the build failed"):
            build_stage(tmp_path, "sft", {"x": 1}, lambda tmp: (_ for _ in ()).throw(RuntimeError("the build failed")))
        assert sorted(p.name for p in stages.glob("*.tmp")) == ["bt-busy.tmp"]  # the failed one is gone too
    finally:
        release.set()
        holder.join()


def test_a_jobs_warnings_go_to_its_log_not_the_console(tmp_path, capfd):
    with warnings_to(tmp_path / "run.log"):
        warnings.warn("is_gradient_checkpointing is deprecated", FutureWarning)
    assert "is_gradient_checkpointing is deprecated" in (tmp_path / "run.log").read_text()
    out, err = capfd.readouterr()
    assert "deprecated" not in out + err


def test_training_that_cannot_fit_is_refused_before_its_first_step(tmp_path, monkeypatch):
    from prefbench import methods
    from prefbench.train.trainer import train

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    view = View("paired", [{"chosen": ([1, 2, 3], [4, 5, 6, 7]), "rejected": ([1, 2, 3], [8, 9])} for _ in range(8)])
    spec = TrainSpec(steps=2, batch_size=4, progress=False, save_final=False)
    monkeypatch.setattr(compute, "memory_limit_bytes", lambda: compute.resident_bytes() + 1024)
    with pytest.raises(UserError, match=r"training needs about .* lower the micro-batch \(trainer.batch_size"):
        train(model, methods.build_method("orpo"), view, spec, tmp_path / "run", 0)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    monkeypatch.undo()
    assert train(model, methods.build_method("orpo"), view, spec, tmp_path / "run", 0)["optimizer_steps"] == 2
