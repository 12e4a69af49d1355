"""Judges: a reward model from a local folder, the Bradley-Terry stage, and the LLM judge against a
real HTTP server on 127.0.0.1 that answers well, with garbage, out of range, or too late."""
import http.server
import json
import threading
import time

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForSequenceClassification

from prefbench.job.config import compose_config
from prefbench.data.tasks import get_task
from prefbench.data.tokenizer import train_bpe
from prefbench.eval.judges import LLMJudge
from prefbench.eval.reward_model import RewardModelJudge, bt_stage
from prefbench.io.errors import UserError
from prefbench.job.pipeline import prepare
from tests.conftest import SMOKE


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A randomly initialised 1-output classifier with our tokenizer, saved like a hub checkpoint."""
    path = tmp_path_factory.mktemp("rm")
    tok = train_bpe([r["prompt"] + " " + r["completion"] for r in get_task("reviews").corpus(100, 0)], 300)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_reward_model_judge_scores_in_batches(tiny_rm):
    judge = RewardModelJudge(str(tiny_rm), batch_size=3)
    prompts = ["Review it.", "Review it.", [{"role": "user", "content": "Review it."}], "x", "y"]
    completions = ["a great film.", "a bad film.", "a great film.", "a great film.", "a great film."]
    scores = judge.score(prompts, completions)
    assert len(scores) == 5 and all(isinstance(s, float) for s in scores)
    assert scores[0] == pytest.approx(scores[2], abs=1e-5)  # string prompt == one-turn conversation
    assert scores[0] != pytest.approx(scores[1])
    single = RewardModelJudge(str(tiny_rm), batch_size=1).score(prompts[:2], completions[:2])
    assert single == pytest.approx(scores[:2], abs=1e-4)  # padding does not change a score


def test_a_transcript_longer_than_the_reward_models_window_keeps_the_response(tiny_rm):
    """Past the 512-token window the reward model reads the transcript's end: the response it judges."""
    judge = RewardModelJudge(str(tiny_rm), batch_size=2)
    long_prompt = " ".join(["Review the film, the actors and the plot."] * 200)
    assert len(judge.tok(long_prompt)["input_ids"]) > 1000
    scores = judge.score([long_prompt] * 2, ["a great film.", "a bad film."])
    assert scores[0] != pytest.approx(scores[1])


def test_a_new_reward_head_is_drawn_from_its_seed_not_the_processs_random_state(tiny_rm, tmp_path):
    """The bt stage's head was drawn from the process's random state: in a sweep, a job that had trained the SFT
    stage first got another reward model than one that found it cached (the proxy reference did not reproduce)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig.from_pretrained(tiny_rm)).save_pretrained(tmp_path)  # a body without a head
    AutoTokenizer.from_pretrained(tiny_rm).save_pretrained(tmp_path)
    heads = []
    for state in (1, 2):
        torch.manual_seed(state)
        heads.append(RewardModelJudge(str(tmp_path), new_head=True, seed=7).model.score.weight)
        after = torch.rand(1)
        torch.manual_seed(state)
        assert torch.equal(after, torch.rand(1))  # the caller's random state is left as it was
    assert torch.equal(*heads)
    assert not torch.equal(heads[0], RewardModelJudge(str(tmp_path), new_head=True, seed=8).model.score.weight)


def test_reward_model_with_wrong_labels_is_one_clear_error(tiny_rm, tmp_path):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig.from_pretrained(tiny_rm)
    cfg.num_labels = 3
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_rm).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="3 output labels; a reward model needs exactly 1"):
        RewardModelJudge(str(tmp_path))


def test_missing_reward_model_offline_fails_fast_with_one_line():
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="unavailable: the hub is offline"):
        RewardModelJudge("no-such-org/no-such-reward-model")
    assert time.perf_counter() - t0 < 30


def test_bradley_terry_stage_ranks_held_out_chosen_above_rejected(shared_cache):
    cfg = compose_config(SMOKE + ["judge=bt", f"cache_dir={shared_cache}", "stages.base.steps=60",
                                  "task.n_pairs=400", "task.eval_size=64", "judge.train.steps=120"])
    group = prepare(cfg)
    path = bt_stage(cfg, group)
    assert bt_stage(cfg, group) == path  # cached
    judge = RewardModelJudge(str(path))
    ev = group.data.eval
    chosen = judge.score(list(ev["prompt"]), list(ev["chosen_text"]))
    rejected = judge.score(list(ev["prompt"]), list(ev["rejected_text"]))
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)
    assert accuracy >= 0.7, accuracy
    from prefbench.io.stages import stage_info

    info = stage_info(path)  # the stage measures the same on the same held-out pairs
    assert info["heldout_accuracy"] == pytest.approx(accuracy) and info["heldout_pairs"] == len(chosen)


def test_the_bt_judge_learns_from_its_own_split_disjoint_from_the_policys(tmp_path):
    from prefbench.data.prepare import prompt_key
    from prefbench.io.stages import stage_info

    cfg = compose_config(SMOKE + ["judge=bt", f"cache_dir={tmp_path}", "task.judge_size=20", "judge.train.steps=2"])
    group = prepare(cfg)
    prompts = {split: {prompt_key(p) for p in getattr(group.data, split)["prompt"]}
               for split in ("train", "val", "eval", "judge")}
    assert len(prompts["judge"]) == 20 == group.data.counts["prompts/judge"]
    assert not prompts["judge"] & (prompts["train"] | prompts["val"] | prompts["eval"])
    info = stage_info(bt_stage(cfg, group))
    assert (info["split"], info["rows"]) == ("judge", len(group.data.judge))
    without = prepare(compose_config(SMOKE + [f"cache_dir={tmp_path}"]))
    assert len(without.data.judge) == 0 and "prompts/judge" not in without.data.counts
    assert len(without.data.train) == len(group.data.train) + len(group.data.judge)  # taken from train only


def test_a_task_without_a_judge_split_keeps_the_bt_stage_it_had_before_the_setting(tmp_path):
    """``task.judge_size: 0`` leaves the bt stage's key as a task config without the key had it: the proxy
    references' reward models are found, not retrained from another seed."""
    from omegaconf import open_dict

    cfg = compose_config(SMOKE + ["judge=bt", f"cache_dir={tmp_path}", "judge.train.steps=2"])
    group = prepare(cfg)
    with_key = bt_stage(cfg, group)
    with open_dict(cfg):
        del cfg.task["judge_size"]
    assert bt_stage(cfg, group) == with_key


class FakeLLM(http.server.BaseHTTPRequestHandler):
    """Answers in turn from ``script``: a score, garbage, an out-of-range score, or a stall."""

    script: list = []
    calls = 0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["messages"][0]["role"] == "user"
        kind = FakeLLM.script[FakeLLM.calls % len(FakeLLM.script)]
        FakeLLM.calls += 1
        if kind == "stall":
            time.sleep(0.5)
            return
        canned = {"garbage": "I think it is pretty good!", "range": '{"score": 42}'}
        reply(self, canned.get(kind, f'{{"score": {kind}}}'))

    def log_message(self, *args):
        pass


def reply(handler, content):
    """An OpenAI-style chat completion whose message is ``content``."""
    payload = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def serve(handler):
    """A threading HTTP server on 127.0.0.1 with ``handler``; yields its /v1 base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture()
def llm_server():
    FakeLLM.calls = 0
    yield from serve(FakeLLM)


def llm_cfg(url, **kw):
    return OmegaConf.create({"base_url": url, "model": "fake", "api_key_env": "PREFBENCH_TEST_KEY",
                             "require_key": True, "timeout_s": 0.2, "max_retries": 2, **kw})


def test_llm_judge_retries_garbage_then_marks_unjudged(llm_server, monkeypatch):
    monkeypatch.setenv("PREFBENCH_TEST_KEY", "sk-test")
    FakeLLM.script = ["7", "garbage", "8", "range", "range", "range", "stall", "stall", "stall"]
    judge = LLMJudge(llm_cfg(llm_server, concurrency=1))  # one at a time: the script answers in turn
    scores = judge.score(["a", "b", "c", "d"], ["x", "y", "z", "w"])
    # a: 7 ; b: garbage then 8 ; c: out of range three times -> None ; d: three stalls -> None
    assert scores == [7.0, 8.0, None, None]
    assert judge.failures == 2 and FakeLLM.calls == 9  # bounded: 1 + max_retries attempts each


def test_llm_judge_needs_its_key_from_the_environment(llm_server, monkeypatch):
    monkeypatch.delenv("PREFBENCH_TEST_KEY", raising=False)
    with pytest.raises(UserError, match="PREFBENCH_TEST_KEY"):
        LLMJudge(llm_cfg(llm_server))


def test_a_run_with_failing_llm_verdicts_is_marked_partial_and_keeps_everything(llm_server, tmp_path, shared_cache):
    from tests.conftest import prefbench, run_dir

    FakeLLM.script = ["7", "garbage", "4", "range"]  # no retries: half of the verdicts never arrive
    prefbench("run", "method=orpo", "judge=llm", f"judge.base_url={llm_server}", "judge.require_key=false",
              "judge.max_retries=0", "judge.timeout_s=2", "judge.concurrency=1", "judge.mode=pairwise",
              f"results_dir={tmp_path}", f"cache_dir={shared_cache}", *SMOKE)
    run = run_dir(tmp_path / "runs", "reviews-tiny-xs-orpo-s0")
    summary = json.loads((run / "summary.json").read_text())
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert summary["status"] == "partial" and summary["eval/unjudged"] > 0
    # pairwise mode asked for 16 (sample, SFT sample) verdicts in both orders; this server answers none of them
    assert summary["eval/pairwise_unjudged"] == 16 and summary["eval/pairwise_win_rate_vs_sft"] is None
    assert len(samples) == 16 and any(s["score"] is None for s in samples) and any(s["score"] for s in samples)
    assert summary["eval/kl"] is not None and summary["train/step"] == 10  # kept; ORPO: 6 + 4 steps (budget=matched)
    assert "sk-" not in (run / "config.yaml").read_text()


class PairwiseLLM(http.server.BaseHTTPRequestHandler):
    """A judge with a rule: the reply with more words wins (score: its word count); ``biased`` answers "A" whatever
    it is shown, a pure position bias. Records each prompt and the most requests it ever had in flight."""

    biased, in_flight, most, seen, formats, lock = False, 0, 0, [], [], threading.Lock()

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][0]["content"]
        with PairwiseLLM.lock:
            PairwiseLLM.seen.append(text)
            PairwiseLLM.formats.append(body.get("response_format"))
            PairwiseLLM.in_flight += 1
            PairwiseLLM.most = max(PairwiseLLM.most, PairwiseLLM.in_flight)
        time.sleep(0.05)
        if "\n\nReply B: " in text:
            a, b = (len(r.split()) for r in text.split("Reply A: ", 1)[1].split("\n\nReply B: "))
            winner = "A" if PairwiseLLM.biased or a > b else "B" if b > a else "tie"
            content = json.dumps({"winner": winner})
        else:
            content = json.dumps({"score": min(10, len(text.rsplit("Assistant: ", 1)[-1].split()))})
        with PairwiseLLM.lock:  # before the reply: once the client has it, its next request may arrive at once
            PairwiseLLM.in_flight -= 1
        reply(self, content)

    def log_message(self, *args):
        pass


@pytest.fixture()
def pairwise_server():
    PairwiseLLM.biased, PairwiseLLM.most, PairwiseLLM.seen, PairwiseLLM.formats = False, 0, [], []
    yield from serve(PairwiseLLM)


def test_pairwise_verdicts_in_both_orders_cancel_a_position_bias(pairwise_server, monkeypatch):
    monkeypatch.setenv("PREFBENCH_TEST_KEY", "sk-test")
    judge = LLMJudge(llm_cfg(pairwise_server, timeout_s=5))
    a, b = ["one two three", "x", "same size"], ["four", "y z", "also same"]
    shares, agreed = judge.compare(["p", "q", "r"], a, b)
    assert shares == [1.0, 0.0, 0.5] and agreed == [True, True, True]
    shown = [t.split("Reply A: ")[1].split("\n\n")[0] for t in PairwiseLLM.seen]
    assert sorted(shown) == sorted(a + b)  # every pair was asked in both orders
    PairwiseLLM.biased = True  # always "A": each order's verdict is the other's opposite, so they cancel
    shares, agreed = judge.compare(["p", "q", "r"], a, b)
    assert shares == [0.5, 0.5, 0.5] and agreed == [False, False, False]


def test_llm_requests_run_concurrently_up_to_the_bound_and_keep_their_order(pairwise_server, monkeypatch):
    monkeypatch.setenv("PREFBENCH_TEST_KEY", "sk-test")
    replies = [" ".join(["w"] * n) for n in (1, 5, 2, 7, 3, 9, 4, 8)]
    scores = LLMJudge(llm_cfg(pairwise_server, timeout_s=5, concurrency=3)).score(["p"] * 8, replies)
    assert scores == [1.0, 5.0, 2.0, 7.0, 3.0, 9.0, 4.0, 8.0] and 2 <= PairwiseLLM.most <= 3
    PairwiseLLM.most = 0
    LLMJudge(llm_cfg(pairwise_server, timeout_s=5, concurrency=1)).score(["p"] * 4, replies[:4])
    assert PairwiseLLM.most == 1


def test_the_prompt_templates_are_configurable_and_checked(pairwise_server, monkeypatch):
    monkeypatch.setenv("PREFBENCH_TEST_KEY", "sk-test")
    judge = LLMJudge(llm_cfg(pairwise_server, timeout_s=5, prompt="Grade {completion} for {prompt}. Assistant: ok"))
    assert judge.score(["hi"], ["there"]) == [1.0] and PairwiseLLM.seen == ["Grade there for hi. Assistant: ok"]
    with pytest.raises(UserError, match=r"judge.pairwise_prompt must contain \{b\}"):
        LLMJudge(llm_cfg(pairwise_server, pairwise_prompt="{prompt}: {a}"))


def test_the_reply_is_constrained_to_the_verdicts_schema_when_asked(pairwise_server, monkeypatch):
    monkeypatch.setenv("PREFBENCH_TEST_KEY", "sk-test")
    LLMJudge(llm_cfg(pairwise_server, timeout_s=5)).score(["p"], ["x"])
    assert PairwiseLLM.formats == [None]  # not asked: no response_format in the request
    judge = LLMJudge(llm_cfg(pairwise_server, timeout_s=5, response_format="json_schema"))
    assert judge.score(["p"], ["x y"]) == [2.0] and judge.compare(["p"], ["a b"], ["c"])[0] == [1.0]
    score, winner, _ = PairwiseLLM.formats[1:]
    assert score["type"] == "json_schema" and score["json_schema"]["schema"]["required"] == ["score"]
    assert winner["json_schema"]["schema"]["properties"]["winner"]["enum"] == ["A", "B", "tie"]
    LLMJudge(llm_cfg(pairwise_server, timeout_s=5, response_format="json_object")).score(["p"], ["x"])
    assert PairwiseLLM.formats[-1] == {"type": "json_object", "schema": score["json_schema"]["schema"]}


def test_the_pairwise_win_rate_against_the_anchor_pairs_sample_j_with_sample_j(pairwise_server, monkeypatch):
    from prefbench.eval.evaluate import _pairwise_vs_anchor

    monkeypatch.setenv("PREFBENCH_TEST_KEY", "sk-test")
    judge = LLMJudge(llm_cfg(pairwise_server, timeout_s=5))
    mine, anchor = ["a b c", "a", "a b", "a b"], ["a", "a b", "a", "a"]  # 2 prompts x k=2: prompt 0 ties 1-1
    out = _pairwise_vs_anchor(judge, ["p0", "p1"], mine, anchor, 2, 50, 0)
    assert out["eval/pairwise_win_rate_vs_sft"] == 0.75 and out["eval/pairwise_consistency"] == 1.0
    assert out["eval/pairwise_unjudged"] == 0 and out["eval/pairwise_win_rate_vs_sft_ci_low"] <= 0.75


def test_pairwise_mode_needs_a_judge_that_compares():
    from prefbench.job.config import validate

    with pytest.raises(UserError, match="judge.mode=pairwise needs a judge that compares"):
        validate(compose_config(["+judge.mode=pairwise"]))  # the default judge, gold, scores one reply
    with pytest.raises(UserError, match="judge.mode='both' is unknown"):
        validate(compose_config(["judge=llm", "judge.mode=both"]))
