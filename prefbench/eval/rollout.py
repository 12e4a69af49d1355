"""Fresh samples for online methods (``needs_samples``): ``train(rollout=Rollout(...))`` calls it once per
micro-batch of prompts, with the current policy.

Each prompt gets the method's ``samples_per_prompt`` samples (side by side, as ``prefbench.methods.base.group_scores``
reads them), drawn by the evaluation's sampler at the evaluation's temperature from a stream keyed by the step
and the prompts, so a resumed run draws exactly the samples an uninterrupted one does. The run's judge scores
them; the reference (the SFT policy, held in memory for the run) scores what the method asks for.
"""
from __future__ import annotations

import time
from dataclasses import replace

from prefbench.data.views import View
from prefbench.eval.sampling import generate
from prefbench.eval.spec import SamplingSpec
from prefbench.io.errors import UserError
from prefbench.model.logprobs import score_view
from prefbench.train.refcache import ReferenceLogps


class Rollout:
    """``rollout(model, indices, step) -> (View of samples with scores, the reference's statistics of them)``.
    Counts what it costs: ``generated_tokens`` (new tokens sampled), ``prompt_tokens`` (prompt tokens prefilled,
    once per sample), ``reference_tokens`` (tokens the reference scored) and ``seconds`` (wall seconds of
    sampling, judging and the reference's pass)."""

    def __init__(self, method, prompts: View, prompt_texts: dict[tuple, object], tokenizer, judge,
                 sampling: SamplingSpec, reference, seed: int, device):
        self.method, self.prompts, self.texts = method, prompts, prompt_texts
        self.tokenizer, self.judge = tokenizer, judge
        self.sampling = replace(sampling, samples_per_prompt=method.samples_per_prompt)
        self.reference, self.seed, self.device = reference, seed, device
        self.generated_tokens = self.prompt_tokens = self.reference_tokens = 0
        self.seconds = {"sampling": 0.0, "judging": 0.0, "reference": 0.0}

    def state_dict(self) -> dict:
        """The cost counters: the trainer's checkpoint carries them, so a resumed run counts every rollout once."""
        return {"generated_tokens": self.generated_tokens, "prompt_tokens": self.prompt_tokens,
                "reference_tokens": self.reference_tokens, "seconds": dict(self.seconds)}

    def load_state_dict(self, state: dict) -> None:
        self.generated_tokens, self.prompt_tokens = state["generated_tokens"], state["prompt_tokens"]
        self.reference_tokens, self.seconds = state["reference_tokens"], dict(state["seconds"])

    def __call__(self, model, indices: list[int], step: int) -> tuple[View, ReferenceLogps | None]:
        prompt_ids = [self.prompts.examples[i]["samples"][0] for i in indices]
        k = self.method.samples_per_prompt
        t0 = time.perf_counter()
        samples = generate(model, self.tokenizer, prompt_ids, self.sampling, self.seed,
                           stream=f"rollout/{step}/{','.join(map(str, indices))}", k=k)
        examples = [{"samples": (p, c)} for p, group in zip(prompt_ids, samples) for c in group]
        texts = [self.tokenizer.decode(c, skip_special_tokens=True) for _, c in (e["samples"] for e in examples)]
        t1 = time.perf_counter()
        scores = self.judge.score([self.texts[tuple(p)] for p, _ in (e["samples"] for e in examples)], texts)
        if any(s is None for s in scores):
            raise UserError(f"the judge left {sum(s is None for s in scores)} of {len(scores)} samples at step "
                            f"{step + 1} unscored; online methods need every sample scored")
        view = View("online", examples, scores={"samples": [float(s) for s in scores]})
        t2 = time.perf_counter()
        self.seconds["sampling"] += t1 - t0
        self.seconds["judging"] += t2 - t1
        self.generated_tokens += sum(len(c) for group in samples for c in group)
        self.prompt_tokens += k * sum(map(len, prompt_ids))
        if self.reference is None:
            return view, None
        self.reference_tokens += view.n_tokens(range(len(view)))
        scored = score_view(self.reference, view, self.tokenizer.pad_token_id, 64, self.device,
                            statistics=self.method.statistics)
        self.seconds["reference"] += time.perf_counter() - t2
        return view, ReferenceLogps(scored)
