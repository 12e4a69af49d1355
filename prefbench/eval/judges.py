"""Judges behind one interface: ``score(prompts, completions) -> list[float | None]`` (None = unjudged).

gold          the built-in task's programmatic reward
reward_model  an AutoModelForSequenceClassification (hub id or local path), batched by tokens
              (prefbench.eval.reward_model)
bt            a reward model trained in the suite, as a cached stage: with the Bradley-Terry loss on paired
              data, with binary cross-entropy on the labels of unpaired data; on the task's judge split
llm           an OpenAI-compatible chat API (prefbench.eval.llm_judge: pointwise, or pairwise in both orders; off by
              default; the key is read from the environment)

A judge is made by a factory ``(cfg, group) -> judge`` registered by name (``register_judge``); other
packages add judges through the entry-point group ``prefbench.judges`` (each entry point names a factory)
plus a ``conf/judge/<name>.yaml`` on Hydra's search path.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import NamedTuple

from omegaconf import DictConfig, OmegaConf

from prefbench.data.tasks import get_task
from prefbench.eval.llm_judge import LLMJudge, prompt_text
from prefbench.eval.reward_model import RewardModelJudge, bt_stage, judge_limits
from prefbench.io.errors import UserError

ENTRY_POINT_GROUP = "prefbench.judges"
_JUDGES: dict[str, Callable] = {}
_loaded = False


def register_judge(name: str):
    """Decorator: ``factory(cfg, group)`` makes the judge ``judge=name`` selects."""
    def add(factory: Callable) -> Callable:
        _JUDGES[name] = factory
        return factory
    return add


def judges() -> dict[str, Callable]:
    """The built-in judges and the entry-point plugins, by name."""
    global _loaded
    if not _loaded:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            register_judge(ep.name)(ep.load())
        _loaded = True
    return dict(sorted(_JUDGES.items()))


def check_judge(cfg: DictConfig) -> None:
    """Judge/task compatibility, checked before any stage is built (not after training and generation)."""
    judge = cfg.get("judge")
    if judge is not None and judge.get("mode", "pointwise") not in ("pointwise", "pairwise"):
        raise UserError(f"judge.mode={judge.mode!r} is unknown; allowed: pointwise, pairwise")
    if judge is not None and judge.get("mode") == "pairwise" and judge.get("name") != "llm":
        raise UserError(f"judge.mode=pairwise needs a judge that compares two replies (judge=llm), not {judge.name}")
    if judge is not None and judge.get("name") == "gold" and cfg.task.get("source", "builtin") != "builtin":
        raise UserError(f"judge=gold needs a built-in task; task {cfg.task.name} has no gold reward "
                        f"(use judge=reward_model or judge=bt)")


class GoldJudge:
    cacheable = True  # the same text always gets the same score

    def __init__(self, task_name: str):
        self.task = get_task(task_name)

    def score(self, prompts, completions) -> list[float | None]:
        return [self.task.reward(prompt_text(p), c) for p, c in zip(prompts, completions)]


@register_judge("gold")
def _gold(cfg: DictConfig, group) -> GoldJudge:
    check_judge(cfg)
    return GoldJudge(cfg.task.builtin)


@register_judge("reward_model")
def _reward_model(cfg: DictConfig, group) -> RewardModelJudge:
    return RewardModelJudge(cfg.judge.path, trust_remote_code=bool(cfg.judge.get("trust_remote_code")),
                            **judge_limits(cfg))


@register_judge("bt")
def _bt(cfg: DictConfig, group) -> RewardModelJudge:
    return RewardModelJudge(str(bt_stage(cfg, group)), **judge_limits(cfg))


@register_judge("llm")
def _llm(cfg: DictConfig, group) -> LLMJudge:
    return LLMJudge(cfg.judge)


class Judging(NamedTuple):
    """What an evaluation judges with: the run's judge, the gold reward beside it when the judge is a proxy
    on a built-in task (so over-optimisation of the proxy shows against the truth, Gao et al. 2022, Fig. 1;
    else None), the judge's name and its resolved config (part of the best-of-n cache key)."""
    judge: object
    gold: GoldJudge | None
    name: str
    config: dict


def make_judging(cfg: DictConfig, group) -> Judging:
    """The judge named by ``cfg.judge`` for this group (the bt judge is trained once, on its train split),
    and the gold reward beside it when that is a proxy."""
    found, name = judges(), cfg.judge.name
    if name not in found:
        raise UserError(f"judge.name={name!r} is unknown; allowed: {', '.join(found)}")
    builtin = cfg.task.get("source", "builtin") == "builtin" and cfg.task.get("builtin")
    gold = GoldJudge(cfg.task.builtin) if builtin and name != "gold" else None
    return Judging(found[name](cfg, group), gold, str(name), OmegaConf.to_container(cfg.judge, resolve=True))
