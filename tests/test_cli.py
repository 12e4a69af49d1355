"""The `prefbench` command end to end: every method through the CLI, clear one-line errors, the
reference cache, and a method plugin that lives outside prefbench."""
import dataclasses
import json
import textwrap

import pytest
from omegaconf import OmegaConf

from prefbench.data.views import View
from prefbench.train import refcache
from tests.conftest import SMOKE, install_package, prefbench, run_dir

UNIFORM = {"loss", "logps/chosen", "logps/chosen_per_token", "nll/chosen", "probe/logps_chosen",
           "probe/logps_rejected", "tokens_per_s", "step", "lr"}
WITH_REFERENCE = {"rewards/chosen", "rewards/rejected"}


def test_methods_lists_the_registry():
    out = prefbench("methods").stdout
    for line in ["dpo           paired    yes       sft   sequence                   beta=0.1",
                 "kto           unpaired  yes       sft", "orpo          paired    no        base",
                 "sft           sft       no        base", "bco           paired    yes       sft   sequence+state",
                 "ld_dpo        paired    yes       sft   sequence+tokens",
                 "tdpo          paired    yes       sft   sequence+reference_kl", "Direct Preference Optimization (Rafailov"]:
        assert line in out


def test_every_method_trains_end_to_end_through_the_cli(tmp_path, shared_cache):
    proc = prefbench("sweep", "method=sft,dpo,ipo,kto,orpo", "hydra.launcher.n_jobs=1", f"results_dir={tmp_path}",
                     "sweep_name=default",
                     f"cache_dir={shared_cache}", *SMOKE)
    assert "report:" in proc.stdout
    for method in ["sft", "dpo", "ipo", "kto", "orpo"]:
        run = run_dir(tmp_path / "default", f"reviews-tiny-xs-{method}-s0")
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "done", summary["error"]
        assert (run / "checkpoint" / "model.safetensors").exists() and (run / "config.yaml").exists()
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        from_base = method in ("sft", "orpo")  # budget=matched: also the SFT stage's 6 steps
        assert [r["step"] for r in rows] == ([0, 2, 4, 6, 8, 10] if from_base else [0, 2, 4])  # 0: init's probe
        expected = UNIFORM | (WITH_REFERENCE if method in ("dpo", "ipo", "kto") else set())
        assert expected <= set(rows[-1]), expected - set(rows[-1])
        if method != "sft":  # paired methods (and KTO, whose rejected are its undesirable examples)
            assert "logps/rejected" in rows[-1]
        # evaluation against the group's SFT anchor, for reference-free methods too
        for key in ["eval/reward_margin", "eval/kl", "eval/win_rate_vs_sft", "eval/win_rate_vs_chosen"]:
            assert summary[key] is not None, key
        assert summary["eval/kl_ci_low"] <= summary["eval/kl"] <= summary["eval/kl_ci_high"]
    assert (tmp_path / "default" / "report" / "index.html").exists()


def test_the_reference_pass_scores_only_the_rows_a_run_trains_on(tmp_path):
    """4 steps of 4 pairs score at most 16 of the ~140 training pairs; the same run again scores none; a
    run of 8 steps scores only the rows the first one lacks, and the cache then holds exactly its rows."""
    args = ["run", "method=dpo", f"results_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}", *SMOKE,
            "trainer.batch_size=4"]

    def summary():
        return json.loads(next((tmp_path / "runs").glob("*dpo*/summary.json")).read_text())

    prefbench(*args)
    first = summary()
    assert first["reference_cache_hit"] is False and 0 < first["cost/reference_rows_scored"] <= 16
    assert first["data/prompts/train"] > 100
    prefbench(*args, "force=true")
    assert (summary()["reference_cache_hit"], summary()["cost/reference_rows_scored"]) == (True, 0)
    prefbench(*args, "trainer.steps=8", "trainer.checkpoint_every=0", "force=true")
    longer = next(s for s in map(lambda p: json.loads(p.read_text()), (tmp_path / "runs").glob("*/summary.json"))
                  if s["train/step"] == 8)
    assert longer["reference_cache_hit"] is False and 0 < longer["cost/reference_rows_scored"] <= 16
    (cached,) = (tmp_path / "cache" / "reflogps").glob("*.safetensors")
    from safetensors.torch import load_file
    assert int(load_file(cached)["scored"].sum()) == first["cost/reference_rows_scored"] + \
        longer["cost/reference_rows_scored"] <= 32


def test_reference_cache_skips_the_reference_forward(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    view = View("paired", [{"chosen": ([1, 2], [3, 4]), "rejected": ([1, 2], [5])}])
    calls = []

    def load():
        calls.append(1)
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2))

    first, hit1 = refcache.cached(tmp_path, "sft-x", view, load, 0, 4, "cpu")
    second, hit2 = refcache.cached(tmp_path, "sft-x", view, load, 0, 4, "cpu")
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert torch.equal(first.tensors["chosen.sum"], second.tensors["chosen.sum"])


@pytest.mark.parametrize("args,message", [
    (["method=foo"], "prefbench: error: method='foo' is unknown; allowed: alphapo, aot, aot_unpaired, apo_down, apo_zero, bco"),
    (["model=huge"], "prefbench: error: model='huge' is unknown; allowed:"),
    (["task=nope"], "prefbench: error: task='nope' is unknown; allowed:"),
    (["method.beta=0"], "prefbench: error: method.beta must be > 0 (got 0)"),
    (["method=orpo", "method.lam=-1"], "prefbench: error: method.lam must be > 0 (got -1)"),
    (["trainer.steps=0"], "prefbench: error: trainer.steps must be > 0 (got 0)"),
    (["task.n_pairs=0"], "prefbench: error: task.n_pairs must be > 0 (got 0)"),
    (["eval.temperature=0"], "prefbench: error: eval.temperature must be > 0 (got 0)"),
    (["eval.top_p=0.9"], "prefbench: error: eval.top_p must be 1 (got 0.9): the KL to the anchor is estimated"),
    (["+method.gamma=1"], "prefbench: error: method.gamma is not a parameter of dpo; allowed: beta"),
    (["seed=abc"], "prefbench: error: seed must be an integer (got 'abc')"),
    (["+model.arch.model_type=nope"], "prefbench: error: model.arch.model_type='nope' is not one of transformers'"),
])
def test_bad_config_is_one_clear_line(tmp_path, args, message):
    proc = prefbench("run", f"results_dir={tmp_path}", *args, check=False)
    assert proc.returncode == 2  # refused before anything ran
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert sum(line.startswith("prefbench: error:") for line in proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["reprot", "results/x"], "prefbench: error: unknown command 'reprot'; did you mean 'report'?"),
    (["nonsense"], "prefbench: error: unknown command 'nonsense' Commands: run, sweep,"),
])
def test_an_unknown_command_is_one_line_and_exit_2(args, message):
    proc = prefbench(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


PLUGIN = '''
from dataclasses import dataclass

import torch

from prefbench.methods import LossOutput, Method, scaled_by_strength


@dataclass
class Hinge(Method):
    """SLiC-style hinge on the DPO log-ratio margin: max(0, 1 - beta * margin)."""

    beta: float = scaled_by_strength(0.5)
    name = "hinge"
    view = "paired"
    needs_reference = True
    init = "sft"

    def loss(self, policy, reference):
        margin = (policy.chosen.sum - reference.chosen.sum) - (policy.rejected.sum - reference.rejected.sum)
        return LossOutput(torch.relu(1 - self.beta * margin).mean())
'''


def install_plugin(tmp_path) -> dict:
    """The README's hinge method as an installed package (an entry point) with its yaml folder; returns the env."""
    env = install_package(tmp_path, "myplugin", PLUGIN, "[prefbench.methods]\nhinge = myplugin:Hinge\n")
    conf = tmp_path / "conf" / "method"
    conf.mkdir(parents=True)
    (conf / "hinge.yaml").write_text("name: hinge\nbeta: 0.5\n")
    return env


def test_external_plugin_is_discovered_by_entry_point_and_trains(tmp_path, shared_cache):
    env = install_plugin(tmp_path)
    assert "hinge         paired    yes       sft   sequence                   beta=0.5" in prefbench("methods", env=env).stdout
    prefbench("run", "method=hinge", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"results_dir={tmp_path}",
              f"cache_dir={shared_cache}", *SMOKE, env=env)
    summary = json.loads((run_dir(tmp_path / "runs", "reviews-tiny-xs-hinge-s0") / "summary.json").read_text())
    assert summary["status"] == "done" and summary["method"] == "hinge" and summary["init"] == "sft"
    assert summary["method/beta"] == 0.5  # the effective value, after strength
    assert summary["cost/mixed_precision"] == "no"  # trainer.mixed_precision=auto: fp32 on a CPU


def test_strength_scales_what_a_plugin_marks_and_refuses_a_plugin_that_marks_nothing(monkeypatch):
    """The README's hinge example under sweep=beta: five strengths give five betas; a method that marks no field
    refuses strength != 1 instead of running five identical jobs."""
    from prefbench import methods
    from prefbench.job.config import compose_config
    from prefbench.io.errors import UserError
    from prefbench.job.config import method_from_config

    namespace = {}
    exec(textwrap.dedent(PLUGIN), namespace)
    plain = dataclasses.make_dataclass("Plain", [("beta", float, 0.5)], bases=(namespace["Hinge"],))
    plain.name = "plain"
    monkeypatch.setitem(methods._REGISTRY, "hinge", namespace["Hinge"])
    monkeypatch.setitem(methods._REGISTRY, "plain", plain)
    cfg = compose_config(["method=dpo"])
    hinge = OmegaConf.create({"name": "hinge", "beta": 0.5})
    assert [method_from_config(hinge, s).beta for s in (0.25, 0.5, 1, 2, 4)] == [0.125, 0.25, 0.5, 1.0, 2.0]
    assert method_from_config(OmegaConf.create({"name": "plain"}), 1).beta == 0.5
    with pytest.raises(UserError, match="strength=2: method plain marks no hyper-parameter that strength scales"):
        method_from_config(OmegaConf.create({"name": "plain"}), 2)
    assert method_from_config(cfg.method, 4).beta == pytest.approx(4 * cfg.method.beta)
