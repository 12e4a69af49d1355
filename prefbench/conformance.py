"""`prefbench conform [METHOD ...] [--e2e]`: the checks every method plugin passes, one line each.

  loss        finite with finite gradients on random statistics and on extreme ones (log-probs near 0 and
              near -1e4, one-token and long sequences), for every role of the method's view; an online method
              also on a reused rollout's later update (pi_old 2 nats a token above and below the policy)
  reference   a reference-free method runs with no reference statistics at all
  direction   for a view with an aligned pair (paired): at a neutral point (policy = reference, or equal
              likelihoods for a reference-free method) a gradient step raises chosen relative to rejected
  strength    ``strength`` scales the fields the method marks, and they change the loss (none marked: a
              strength other than 1 is refused)
  resume      a tiny model trained 4 steps equals one stopped after its step-2 checkpoint and resumed, weights
              and method state bit for bit (an online method with a stand-in rollout: fixed samples per step)
  e2e         (--e2e) ``prefbench run`` on tiny-xs for a few steps: trained, evaluated, status done

The same functions run in the test suite for every registered method (tests/test_conformance.py).
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from prefbench import methods
from prefbench.io.errors import UserError
from prefbench.methods import BatchLogps, Method, SeqLogps

ROLES_B = 4  # sequences per role in the synthetic batches


def _batch(method: Method, draw: Callable[[tuple[int, ...]], torch.Tensor], lengths: list[int],
           leaves: list[torch.Tensor] | None = None, against: Callable | None = None) -> BatchLogps:
    """Statistics for every role of the method's view from per-token log-probs ``draw((B, T))``; the tokens are
    gradient leaves (collected in ``leaves``) and the sums derive from them, so every statistic has a gradient.
    The vocabulary statistics the method asks for are those of a two-token vocabulary {y_t, other}, so they are
    consistent with the log-probs (``reference_kl``: against the reference's log-probs ``against((B, T))``, else
    the policy's own)."""
    spec, asked = methods.view_spec(method.view), method.statistics
    roles = {}
    for i, role in enumerate(spec.roles + spec.no_grad_roles):
        n = torch.tensor([lengths[(i + j) % len(lengths)] for j in range(ROLES_B)])
        tokens = draw((ROLES_B, int(n.max()))).float().clone().requires_grad_(role not in spec.no_grad_roles)
        if leaves is not None and tokens.requires_grad:
            leaves.append(tokens)
        mask = torch.arange(tokens.shape[1])[None] < n[:, None]
        masked = tokens * mask
        extra = {}
        if "tokens" in asked:
            extra["tokens"] = masked
        if "prompt" in asked:  # a three-token prompt, a little likelier per token than the completion
            extra |= {"prompt_sum": masked.sum(1) * 3 / (2 * n), "prompt_n_tokens": torch.full_like(n, 3)}
        if "collision" in asked:  # log(p^2 + (1 - p)^2)
            extra["token_collision"] = torch.logaddexp(2 * tokens, 2 * _log1mexp(tokens)) * mask
        if "reference_kl" in asked:
            ref = (against(tokens.shape) if against is not None else tokens.detach()).float().clamp(max=-1e-6)
            kl = ref.exp() * (ref - tokens) + (-ref.expm1()) * (_log1mexp(ref) - _log1mexp(tokens))
            extra["token_kl"] = kl * mask
        if "values" in asked:  # a value head's estimates, a leaf of their own (not in ``leaves``)
            extra["values"] = (tokens.detach() * 0.5 + 0.25).requires_grad_(tokens.requires_grad) * mask
        score = torch.linspace(-1, 1, ROLES_B) if method.needs_samples else None
        roles[role] = SeqLogps(masked.sum(1), n, score=score, **extra)
    return BatchLogps(**roles)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0."""
    x = x.clamp(max=-1e-6)
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _loss(method: Method, policy: BatchLogps, reference: BatchLogps | None):
    state = method.initial_state()
    return method.loss(policy, reference) if state is None else method.loss(policy, reference, state)


def check_loss(method: Method) -> str:
    cases = {"random": (lambda shape: -torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 3, [1, 3, 7]),
             "near zero": (lambda shape: torch.full(shape, -1e-6), [1, 2]),
             "very unlikely": (lambda shape: torch.full(shape, -60.0), [20, 40]),
             "mixed": (lambda shape: torch.where(torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.5,
                                                 -1e-6, -40.0), [1, 30])}
    old_shifts = (None, -2.0, 2.0) if method.needs_samples else (None,)
    for case, (draw, lengths) in cases.items():
        for shift in (-0.5, 0.5):  # the policy above and below the reference, by half a nat per token
            for old in old_shifts:
                leaves: list[torch.Tensor] = []
                policy = _batch(method, draw, lengths, leaves, against=lambda s: draw(s) + shift)
                policy = _with_old(policy, old) if old is not None else policy
                reference = _batch(method, lambda s: draw(s) + shift, lengths) if method.needs_reference else None
                total = _loss(method, policy, reference).total()
                where = f"{case} log-probs" + (f", pi_old {old:+g} nats a token" if old is not None else "")
                if total.dim() != 0 or not torch.isfinite(total):
                    raise AssertionError(f"loss is {total} on {where}")
                total.backward()
                if any(t.grad is None or not torch.isfinite(t.grad).all() for t in leaves):
                    raise AssertionError(f"a non-finite or missing gradient on {where}")
    reused = ", and on a reused rollout (pi_old away from the policy)" if method.needs_samples else ""
    return (f"finite loss and gradients on {len(cases)} kinds of statistics, policy above and below the "
            f"reference{reused}")


def _with_old(policy: BatchLogps, shift: float) -> BatchLogps:
    """Each role with ``old``: its own statistics, detached, with pi_old ``shift`` nats a token away."""
    def old(s: SeqLogps) -> SeqLogps:
        moved = s.detached()
        tokens = moved.tokens + shift * s.mask if moved.tokens is not None else None
        return replace(moved, sum=moved.sum + shift * s.n_tokens, tokens=tokens)
    return BatchLogps(**{role: replace(s, old=old(s)) for role, s in policy.items()})


def check_reference(method: Method) -> str:
    if method.needs_reference:
        return "uses the reference (not checked)"
    _loss(method, _batch(method, lambda s: -torch.ones(s), [2, 3]), None).total()
    return "runs without reference statistics"


def check_direction(method: Method) -> str:
    margin = methods.view_spec(method.view).margin
    if margin is None:
        return f"view {method.view} has no aligned pair (not checked)"
    good, bad = margin
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        values = -torch.rand((ROLES_B, 5), generator=g) * 2 - 0.1
        leaves: list[torch.Tensor] = []
        policy = _batch(method, lambda s: values, [5], leaves)  # chosen and rejected alike
        reference = _batch(method, lambda s: values, [5]) if method.needs_reference else None
        _loss(method, policy, reference).total().backward()
        spec_roles = methods.view_spec(method.view).roles
        grad = {role: leaves[spec_roles.index(role)].grad for role in (good, bad)}
        # d/dt (S(good) - S(bad)) along -grad: -dL/dlogp(good) + dL/dlogp(bad), summed over the tokens (all count)
        rise = float(-grad[good].sum() + grad[bad].sum())
        if not rise > 0:
            raise AssertionError(f"a gradient step lowers {good} relative to {bad} (rate {rise:.3g}, seed {seed})")
    return f"a gradient step raises {good} relative to {bad}"


def check_strength(name: str) -> str:
    cls = methods.registry()[name]
    marked = list(methods.strength_fields(cls))
    if not marked:
        try:
            methods.apply_strength(name, {}, 2.0)
        except ValueError:
            return "marks no field: strength != 1 is refused"
        raise AssertionError("marks no field but accepts strength=2")
    params, base = methods.apply_strength(name, {}, 2.0), cls()
    for field in marked:
        before, after = getattr(base, field), params[field]
        if after not in (before * 2, before / 2):
            raise AssertionError(f"strength 2 turned {field}={before} into {after}")
    draw = lambda s: -torch.rand(s, generator=torch.Generator().manual_seed(2)) * 3  # noqa: E731
    outcome = []
    for method in (cls(), cls(**params)):  # the loss and its gradient (RLOO's loss is 0 on-policy; its gradient is not)
        leaves: list[torch.Tensor] = []
        reference = _batch(method, lambda s: draw(s) * 0.7, [2, 4]) if method.needs_reference else None
        total = _loss(method, _batch(method, draw, [2, 4], leaves, against=lambda s: draw(s) * 0.7), reference).total()
        total.backward()
        outcome.append([total.detach()] + [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves])
    if all(torch.equal(a, b) for a, b in zip(*outcome)):
        raise AssertionError(f"strength scales {', '.join(marked)} but neither the loss nor its gradient changes")
    return f"strength scales {', '.join(marked)}"


def check_resume(method: Method, work: Path) -> str:
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefbench.data.views import View, build_view
    from prefbench.model.logprobs import score_view
    from prefbench.train import refcache
    from prefbench.train.trainer import Callbacks, Sources, TrainSpec, train

    data = Dataset.from_dict({"prompt_ids": [[1, 2, 3], [1, 3, 2], [2, 1, 3], [3, 2, 1]],
                              "chosen_ids": [[4, 5, 6], [4, 6], [5, 4, 6, 7], [6, 5]],
                              "rejected_ids": [[7, 8, 9], [8, 7, 9, 10], [9, 8], [10, 9, 8]]})
    if "paired" not in methods.view_spec(method.view).kinds:
        return f"view {method.view} does not build from paired data (not checked)"
    view = build_view(method.view, "paired", data, 0)
    spec = TrainSpec(steps=4, batch_size=2, lr=1e-2, warmup_ratio=0.0, scheduler="constant", log_every=1,
                     checkpoint_every=2, progress=False)

    def model():
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))

    def rollout(policy, indices: list[int], step: int):
        """Stands in for sampling: the same samples and scores for the same (step, prompts), like the real one."""
        role, k = methods.view_spec(method.view).roles[0], method.samples_per_prompt
        examples = [{role: (view.examples[i][role][0], [4 + (step + i + j) % 9, 5 + j % 3][: 1 + (i + j) % 2])}
                    for i in indices for j in range(k)]
        samples = View(method.view, examples, scores={role: [float((j * 7 + step) % 5) for j in range(len(examples))]})
        scored = score_view(model(), samples, 0, 8, "cpu", statistics=method.statistics) if method.needs_reference else None
        return samples, None if scored is None else refcache.ReferenceLogps(scored)

    def run(out: Path, curve=None):
        ref = refcache.cached(work / "cache", "init", view, model, 0, 8, "cpu", statistics=method.statistics)[0] \
            if method.needs_reference and not method.needs_samples else None
        policy = model()
        ref_model = model() if "reference_kl" in method.statistics else None
        return policy, train(policy, method, view, spec, out, pad_id=0,
                             sources=Sources(ref, ref_model, rollout if method.needs_samples else None),
                             callbacks=Callbacks(curve=curve))

    class StopAt2:
        def steps(self, total):
            return {2}

        def __call__(self, model, step):
            raise _Stopped

    straight, stats = run(work / "straight")
    try:
        run(work / "resumed", curve=StopAt2())
    except _Stopped:
        pass
    resumed, again = run(work / "resumed")
    if again["resumed_from_step"] != 2:
        raise AssertionError(f"resumed from step {again['resumed_from_step']}, not 2")
    if not all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters())):
        raise AssertionError("resumed weights differ from an uninterrupted run's")
    state, state_again = stats["method_state"], again["method_state"]
    if (state is None) != (state_again is None) or state and any(not torch.equal(state[k], state_again[k])
                                                                 for k in state):
        raise AssertionError("resumed method state differs from an uninterrupted run's")
    return "stopped at step 2 and resumed: the same weights" + (" and state" if state else "")


class _Stopped(Exception):
    pass


def check_end_to_end(name: str, work: Path) -> str:
    from omegaconf import OmegaConf

    from prefbench import CONF_DIR
    from prefbench.job.config import compose_config
    from prefbench.job.run import run_job

    has_yaml = (CONF_DIR / "method" / f"{name}.yaml").exists()
    cfg = compose_config([f"method={name if has_yaml else 'sft'}", "model=tiny-xs", "task.n_pairs=160",
                          "task.corpus_size=200", "task.eval_size=8", "stages.base.steps=15", "stages.sft.steps=6",
                          "trainer.steps=4", "trainer.log_every=2", "trainer.progress=false", "eval.samples_per_prompt=2",
                          "eval.diversity=false", "eval.bootstrap=50", "eval.best_of_n=0", "eval.curve.fractions=[]",
                          f"results_dir={work}", "sweep_name=conform", f"cache_dir={work / 'cache'}"])
    if not has_yaml:  # a plugin without a yaml on the search path: its dataclass defaults
        cfg.method = OmegaConf.create({"name": name})
    summary = run_job(cfg, work / "conform" / name)
    if summary.get("status") != "done":
        raise AssertionError(f"prefbench run ended {summary.get('status')}: {summary.get('error')}")
    return f"trained and evaluated on tiny-xs (win rate vs SFT {summary['eval/win_rate_vs_sft']:.2f})"


def conform(name: str, e2e: bool = False, work: Path | None = None) -> list[tuple[str, str, bool]]:
    """(check, message, passed) for each check of method ``name`` with its default hyper-parameters; ``work``
    (default: a temporary folder) holds the runs, and the end-to-end stage cache that methods can share."""
    if work is None:
        with tempfile.TemporaryDirectory() as tmp:
            return conform(name, e2e, Path(tmp))
    method = methods.build_method(name)
    checks = {"loss": lambda: check_loss(method), "reference": lambda: check_reference(method),
              "direction": lambda: check_direction(method), "strength": lambda: check_strength(name),
              "resume": lambda: check_resume(method, work / "resume" / name)}
    if e2e:
        checks["e2e"] = lambda: check_end_to_end(name, work / "e2e")
    results = []
    for check, run in checks.items():
        try:
            results.append((check, run(), True))
        except Exception as exc:  # a failing check is reported, and the others still run
            results.append((check, f"{type(exc).__name__}: {exc}", False))
    return results


def main(args: list[str]) -> int:
    e2e = "--e2e" in args
    names = [a for a in args if a != "--e2e"] or list(methods.registry())
    unknown = [n for n in names if n not in methods.registry()]
    if unknown:
        raise UserError(f"conform: method {unknown[0]!r} is not registered; registered: {', '.join(methods.registry())}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for check, message, passed in conform(name, e2e, Path(tmp)):
                failed += not passed
                print(f"{name:13} {check:9} {'ok  ' if passed else 'FAIL'} {message}", flush=True)
    print(f"{len(names)} method(s): {'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0
