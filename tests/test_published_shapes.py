"""Published shapes the project's real losses must reproduce.

The IPO bandit of Azar et al. (2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", section 5.1 and Fig. 1): three actions y1 > y2 > y3, deterministic preferences, the dataset of the three
pairs, a tabular softmax policy and a uniform reference. DPO drives the probability of every action that is never
chosen to 0 whatever beta; IPO stops at the finite optimum of sum_pairs (h - 1/(2 beta))^2. And DPO's likelihood
displacement on the built-in task (the held-out chosen log-prob falls while the margin rises). Best-of-n's analytic
KL against a Monte-Carlo estimate is in tests/test_frontier.py.
"""
import json
import math

import pytest
import torch

from prefbench.methods import build_method
from prefbench.methods.base import BatchLogps, SeqLogps

CHOSEN, REJECTED = torch.tensor([0, 1, 0]), torch.tensor([1, 2, 2])  # pairs (y1, y2), (y2, y3), (y1, y3)
BETAS = (0.1, 0.5, 1.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Three-element tensors: a second thread only adds wake-up waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(logp: torch.Tensor) -> BatchLogps:
    ones = torch.ones(len(CHOSEN), dtype=logp.dtype)  # one token per action, so A(y) = S(y)
    return BatchLogps(chosen=SeqLogps(sum=logp[CHOSEN], n_tokens=ones),
                      rejected=SeqLogps(sum=logp[REJECTED], n_tokens=ones))


REFERENCE = batch(torch.full((3,), -math.log(3), dtype=torch.float64))


def loss_fn(method):
    return lambda theta: method.loss(batch(torch.log_softmax(theta, 0)), REFERENCE).loss


def adam(method, steps: int, lr: float = 0.3) -> list[torch.Tensor]:
    """pi after ``steps // 2`` and after ``steps`` Adam steps from the uniform policy."""
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt, loss, out = torch.optim.Adam([theta], lr=lr), loss_fn(method), []
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss(theta).backward()
        opt.step()
        if step in (steps // 2, steps):
            out.append(torch.softmax(theta.detach(), 0))
    return out


def lbfgs(method, start=(0.0, 0.0, 0.0)) -> torch.Tensor:
    theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")
    loss = loss_fn(method)

    def closure():
        opt.zero_grad()
        value = loss(theta)
        value.backward()
        return value

    opt.step(closure)
    return theta.detach()


@pytest.mark.parametrize("beta", BETAS)
def test_dpo_drives_never_chosen_actions_to_zero_for_every_beta(beta):
    dpo = build_method("dpo", beta=beta)
    short, long = adam(dpo, 200)
    assert long[2] < 1e-3 and long[2] < short[2] / 2  # y3, only ever rejected: -> 0, and still falling
    assert long[1] < 1e-2 and long[1] < short[1]  # y2 too: the pairs push theta1 - theta2 -> infinity as well
    assert long[0] > 0.99


def test_ipo_stops_at_its_closed_form_optimum():
    pi3 = []
    for beta in BETAS:
        ipo = build_method("ipo", beta=beta)
        theta = lbfgs(ipo)
        # minimise (x - tau)^2 + (y - tau)^2 + (x + y - tau)^2, x = theta1 - theta2, y = theta2 - theta3,
        # tau = 1/(2 beta): x = y = 2 tau / 3 = 1/(3 beta)
        x, y = float(theta[0] - theta[1]), float(theta[1] - theta[2])
        assert x == pytest.approx(1 / (3 * beta), abs=1e-4) and y == pytest.approx(1 / (3 * beta), abs=1e-4)
        p = torch.softmax(theta, 0)
        expect = 1 / (1 + math.exp(x) + math.exp(2 * x))
        assert float(p[2]) == pytest.approx(expect, rel=1e-6)
        # started where DPO goes (pi(y3) ~ 1e-9), IPO climbs back to the same optimum
        again = lbfgs(ipo, start=(20.0, 10.0, 0.0))
        assert float(again[0] - again[1]) == pytest.approx(x, abs=1e-4)
        assert float(again[1] - again[2]) == pytest.approx(y, abs=1e-4)
        pi3.append(float(p[2]))
    assert pi3[0] > 1e-3 and pi3[0] < pi3[1] < pi3[2]  # bounded away from 0, and more mass on y3 as beta grows


def test_dpo_on_the_builtin_task_displaces_the_chosen_likelihood(tmp_path):
    """Razin et al. 2024 / Rafailov et al. 2024: DPO raises the chosen-rejected margin on held-out pairs while the
    chosen completion's own log-prob falls. A real tiny run through `prefbench run`; the report flags it."""
    import pandas as pd

    from prefbench.report.frontier_tables import DISPLACEMENT, diagnostics
    from tests.conftest import prefbench, run_dir

    prefbench("run", "method=dpo", "model=tiny-xs", f"results_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}",
              "task.n_pairs=600", "task.corpus_size=800", "task.eval_size=32", "stages.base.steps=120",
              "stages.sft.steps=40", "trainer.steps=60", "trainer.progress=false", "eval.diversity=false",
              "eval.bootstrap=50", "eval.samples_per_prompt=2", "eval.best_of_n=0", "eval.curve.fractions=[]")
    run = run_dir(tmp_path / "runs", "reviews-tiny-xs-dpo-s0")
    probe = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = probe[0], probe[-1]
    assert first["step"] == 0 and last["step"] == 60
    margin = [p["probe/logps_chosen"] - p["probe/logps_rejected"] for p in (first, last)]
    assert last["probe/logps_chosen"] < first["probe/logps_chosen"] - 0.5  # the chosen likelihood falls
    assert margin[1] > margin[0] + 0.5  # while the margin rises
    runs = pd.DataFrame([{"run_dir": str(run), "series": "dpo", "model": "tiny-xs", "seed": 0, "status": "done",
                          **json.loads((run / "summary.json").read_text())}])
    assert DISPLACEMENT in set(diagnostics(runs, pd.DataFrame())["flag"])
