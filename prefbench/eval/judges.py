"""Judges behind one interface: ``score(prompts, completions) -> list[float | None]`` (None = unjudged).

gold          the built-in task's programmatic reward
reward_model  an AutoModelForSequenceClassification (hub id or local path), batched
bt            a reward model trained in the suite, as a cached stage: with the Bradley-Terry loss on paired
              data, with binary cross-entropy on the labels of unpaired data
llm           an OpenAI-compatible chat API (prefbench.eval.llm_judge: pointwise, or pairwise in both orders; off by
              default; the key is read from the environment)

A judge is made by a factory ``(cfg, group) -> judge`` registered by name (``register_judge``); other
packages add judges through the entry-point group ``prefbench.judges`` (each entry point names a factory)
plus a ``conf/judge/<name>.yaml`` on Hydra's search path.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from prefbench.data.tasks import get_task
from prefbench.eval.llm_judge import LLMJudge, prompt_text
from prefbench.io.errors import UserError
from prefbench.io.hub import friendly_hub_errors
from prefbench.io.stages import build_stage
from prefbench.model.models import device as default_device

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
    def __init__(self, task_name: str):
        self.task = get_task(task_name)

    def score(self, prompts, completions) -> list[float | None]:
        return [self.task.reward(prompt_text(p), c) for p, c in zip(prompts, completions)]


class RewardModelJudge:
    def __init__(self, path: str, batch_size: int = 32, trust_remote_code: bool = False, device: str | None = None,
                 new_head: bool = False, seed: int = 0):
        """``new_head``: a causal LM's body plus a fresh scalar head, drawn from ``seed`` (not from whatever the
        process's random state is: a sweep job that trained a stage first would otherwise get another head)."""
        self.device = device or default_device()
        with friendly_hub_errors("reward model", path), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            head = {"num_labels": 1} if new_head else {}
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, trust_remote_code=trust_remote_code, **head).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise UserError(f"reward model {path}: has {self.model.config.num_labels} output labels; "
                            f"a reward model needs exactly 1 (a scalar score)")
        if self.tok.pad_token is None:
            if self.tok.eos_token is None:
                raise UserError(f"reward model {path}: its tokenizer has neither a pad nor an eos token")
            self.tok.pad_token = self.tok.eos_token
        self.model.config.pad_token_id = self.tok.pad_token_id
        self.tok.truncation_side = "left"  # past the window the dialogue's start is cut, never the response judged
        self.batch_size = batch_size

    def texts(self, prompts, completions) -> list[str]:
        out = []
        for p, c in zip(prompts, completions):
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            if self.tok.chat_template:
                out.append(self.tok.apply_chat_template(msgs + [{"role": "assistant", "content": c}], tokenize=False))
            else:
                out.append("\n\n".join(m["content"] for m in msgs) + "\n\n" + c)
        return out

    def rewards(self, texts: list[str], grad: bool = False) -> torch.Tensor:
        enc = self.tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt",
                       add_special_tokens=False).to(self.device)
        if int(enc["input_ids"].max()) >= self.model.config.vocab_size:
            raise UserError("reward model: its tokenizer produces ids beyond the model's vocabulary")
        with torch.set_grad_enabled(grad):
            return self.model(**enc).logits[:, 0].float()

    def score(self, prompts, completions) -> list[float | None]:
        texts = self.texts(prompts, completions)
        out = []
        for i in range(0, len(texts), self.batch_size):
            out += self.rewards(texts[i: i + self.batch_size]).tolist()
        return out


def train_bradley_terry(judge: RewardModelJudge, pairs: list[dict], steps: int, batch_size: int, lr: float,
                        seed: int) -> dict:
    """Fit a reward model with L = -log sigma(r(x, yw) - r(x, yl)) on (prompt, chosen, rejected) rows."""
    def loss(rows):
        prompts = [r["prompt"] for r in rows]
        r = judge.rewards(judge.texts(prompts * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows]),
                          grad=True)
        return -F.logsigmoid(r[:len(rows)] - r[len(rows):]).mean()

    return {"bt_loss_last": _fit(judge, pairs, loss, steps, batch_size, lr, seed)}


def train_binary(judge: RewardModelJudge, rows: list[dict], steps: int, batch_size: int, lr: float,
                 seed: int) -> dict:
    """Fit a reward model on unpaired (prompt, completion, label) rows with binary cross-entropy,
    L = -[y log sigma(r) + (1 - y) log(1 - sigma(r))]: r(x, y) is the logit of P(desirable)."""
    def loss(batch):
        r = judge.rewards(judge.texts([b["prompt"] for b in batch], [b["completion"] for b in batch]), grad=True)
        return F.binary_cross_entropy_with_logits(r, torch.tensor([float(b["label"]) for b in batch], device=r.device))

    return {"bce_loss_last": _fit(judge, rows, loss, steps, batch_size, lr, seed)}


def _fit(judge: RewardModelJudge, rows: list[dict], loss_of, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """AdamW on ``loss_of(batch)`` over seeded random batches of ``rows``; the mean of the last 10 losses."""
    torch.manual_seed(seed)
    judge.model.train()
    opt = torch.optim.AdamW(judge.model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        loss = loss_of([rows[i] for i in torch.randint(len(rows), (batch_size,), generator=g).tolist()])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    judge.model.eval()
    return sum(losses[-10:]) / len(losses[-10:])


@register_judge("gold")
def _gold(cfg: DictConfig, group) -> GoldJudge:
    check_judge(cfg)
    return GoldJudge(cfg.task.builtin)


@register_judge("reward_model")
def _reward_model(cfg: DictConfig, group) -> RewardModelJudge:
    return RewardModelJudge(cfg.judge.path, int(cfg.judge.batch_size), bool(cfg.judge.get("trust_remote_code")))


@register_judge("bt")
def _bt(cfg: DictConfig, group) -> RewardModelJudge:
    return RewardModelJudge(str(bt_stage(cfg, group)), int(cfg.judge.batch_size))


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


def bt_stage(cfg: DictConfig, group) -> Path:
    spec = {"base": group.base, "task": OmegaConf.to_container(cfg.task, resolve=True), "seed": int(cfg.seed),
            "train": OmegaConf.to_container(cfg.judge.train, resolve=True)}

    def build(tmp: Path) -> dict:
        judge = RewardModelJudge(group.base, int(cfg.judge.batch_size), new_head=True, seed=int(cfg.seed))
        train, hp = group.data.train, cfg.judge.train
        if group.data.kind == "unpaired":
            rows = [{"prompt": p, "completion": c, "label": y}
                    for p, c, y in zip(train["prompt"], train["completion_text"], train["label"])]
            stats = train_binary(judge, rows, int(hp.steps), int(hp.batch_size), float(hp.lr), int(cfg.seed))
        else:
            pairs = [{"prompt": p, "chosen": c, "rejected": r}
                     for p, c, r in zip(train["prompt"], train["chosen_text"], train["rejected_text"])]
            stats = train_bradley_terry(judge, pairs, int(hp.steps), int(hp.batch_size), float(hp.lr), int(cfg.seed))
        judge.model.save_pretrained(tmp, safe_serialization=True)
        judge.tok.save_pretrained(tmp)
        return stats

    return build_stage(cfg.cache_dir, "bt", spec, build)
