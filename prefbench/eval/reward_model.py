"""Reward models as judges: a sequence classifier with one scalar output, and the in-suite ``bt`` one trained
as a cached stage (Bradley-Terry on pairs, binary cross-entropy on labelled rows).

Memory is bounded by tokens, not rows: every forward holds at most ``max_tokens`` padded tokens (rows sorted by
length, grouped under the budget; a batch of training rows is split the same way with gradient accumulation),
training recomputes activations in backward (gradient checkpointing), and a text longer than ``max_length``
loses the start of its dialogue, never the response being judged.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from prefbench.data.sources import task_settings
from prefbench.io.bars import bar
from prefbench.io.errors import UserError
from prefbench.io.hub import friendly_hub_errors
from prefbench.io.stages import build_stage
from prefbench.model.compute import check_fits, release_memory, training_bytes
from prefbench.model.models import attach_lora, set_checkpointing
from prefbench.model.models import device as default_device

WINDOW = 512  # a reward model's default window in tokens (judge.max_length)
MAX_TOKENS = 4096  # its default padded tokens per forward (judge.max_tokens)


def token_batches(lengths: list[int], max_tokens: int, max_rows: int, texts_per_row: int = 1) -> list[list[int]]:
    """Consecutive groups of the row indices ``0..len(lengths)-1``, each with at most ``max_rows`` rows and
    ``texts_per_row * rows * longest length <= max_tokens`` (a single row over the budget goes alone): the
    padded tokens of one forward. Sort ``lengths`` first to waste little on padding."""
    groups: list[list[int]] = []
    longest = 0
    for i, n in enumerate(lengths):
        fits = texts_per_row * (len(groups[-1]) + 1) * max(longest, n) <= max_tokens if groups else False
        if fits and len(groups[-1]) < max_rows:
            groups[-1].append(i)
            longest = max(longest, n)
        else:
            groups.append([i])
            longest = n
    return groups


class RewardModelJudge:
    cacheable = True  # a fixed model: the same text always gets the same score
    def __init__(self, path: str, batch_size: int = 32, trust_remote_code: bool = False, device: str | None = None,
                 new_head: bool = False, seed: int = 0, max_length: int = WINDOW, max_tokens: int = MAX_TOKENS):
        """``new_head``: a causal LM's body plus a fresh scalar head, drawn from ``seed`` (not from whatever the
        process's random state is: a sweep job that trained a stage first would otherwise get another head).
        ``batch_size`` rows and ``max_tokens`` padded tokens at most per forward; ``max_length`` tokens per text."""
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
        self.batch_size, self.max_length, self.max_tokens = batch_size, max_length, max_tokens

    def texts(self, prompts, completions) -> list[str]:
        out = []
        for p, c in zip(prompts, completions):
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            if self.tok.chat_template:
                out.append(self.tok.apply_chat_template(msgs + [{"role": "assistant", "content": c}], tokenize=False))
            else:
                out.append("\n\n".join(m["content"] for m in msgs) + "\n\n" + c)
        return out

    def lengths(self, texts: list[str]) -> list[int]:
        """Each text's tokens as the model sees it (cut to ``max_length``)."""
        ids = self.tok(texts, add_special_tokens=False)["input_ids"]
        return [min(len(i), self.max_length) for i in ids]

    def rewards(self, texts: list[str], grad: bool = False) -> torch.Tensor:
        """r(x, y) of each text in one forward (callers keep it under ``max_tokens``: ``token_batches``)."""
        enc = self.tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
                       add_special_tokens=False).to(self.device)
        if int(enc["input_ids"].max()) >= self.model.config.vocab_size:
            raise UserError("reward model: its tokenizer produces ids beyond the model's vocabulary")
        with torch.set_grad_enabled(grad):
            return self.model(**enc).logits[:, 0].float()

    def score(self, prompts, completions) -> list[float | None]:
        texts = self.texts(prompts, completions)
        lengths = self.lengths(texts)
        order = sorted(range(len(texts)), key=lengths.__getitem__, reverse=True)
        out: list[float | None] = [None] * len(texts)
        groups = token_batches([lengths[i] for i in order], self.max_tokens, self.batch_size)
        for group in bar(groups, "judging"):
            rows = [order[j] for j in group]
            for i, r in zip(rows, self.rewards([texts[i] for i in rows]).tolist()):
                out[i] = r
        return out


def train_bradley_terry(judge: RewardModelJudge, pairs: list[dict], steps: int, batch_size: int, lr: float,
                        seed: int) -> dict:
    """Fit a reward model with L = -log sigma(r(x, yw) - r(x, yl)) on (prompt, chosen, rejected) rows."""
    def texts(rows):
        return judge.texts([r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])

    def loss(rows):
        r = judge.rewards(texts(rows), grad=True)
        return -F.logsigmoid(r[:len(rows)] - r[len(rows):]).mean()

    def length(rows):  # a pair's two texts share one forward: its cost is twice the longer
        n = judge.lengths(texts(rows))
        return [max(a, b) for a, b in zip(n[:len(rows)], n[len(rows):])]

    return {"bt_loss_last": _fit(judge, pairs, loss, length, 2, steps, batch_size, lr, seed)}


def train_binary(judge: RewardModelJudge, rows: list[dict], steps: int, batch_size: int, lr: float,
                 seed: int) -> dict:
    """Fit a reward model on unpaired (prompt, completion, label) rows with binary cross-entropy,
    L = -[y log sigma(r) + (1 - y) log(1 - sigma(r))]: r(x, y) is the logit of P(desirable)."""
    def texts(batch):
        return judge.texts([b["prompt"] for b in batch], [b["completion"] for b in batch])

    def loss(batch):
        r = judge.rewards(texts(batch), grad=True)
        return F.binary_cross_entropy_with_logits(r, torch.tensor([float(b["label"]) for b in batch], device=r.device))

    return {"bce_loss_last": _fit(judge, rows, loss, lambda batch: judge.lengths(texts(batch)), 1, steps, batch_size,
                                  lr, seed)}


def _fit(judge: RewardModelJudge, rows: list[dict], loss_of, length_of, texts_per_row: int, steps: int,
         batch_size: int, lr: float, seed: int) -> float:
    """AdamW on the mean of ``loss_of(rows)`` over seeded random batches of ``batch_size`` rows, each batch in
    forwards of at most ``judge.max_tokens`` padded tokens (gradient accumulation, weighted by rows), with
    gradient checkpointing; returns the mean of the last 10 losses."""
    trainable = sum(p.numel() for p in judge.model.parameters() if p.requires_grad)
    check_fits(training_bytes(judge.model, trainable, judge.max_tokens, 0, checkpointing=True),
               "the reward model's training", "judge.max_tokens (padded tokens per forward) or judge.max_length")
    torch.manual_seed(seed)
    judge.model.train()
    set_checkpointing(judge.model, True)
    trained = [p for p in judge.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=lr, fused=True)  # fused: no whole-model temporaries in the step
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in bar(range(steps), "reward model", unit="step"):
        batch = [rows[i] for i in torch.randint(len(rows), (batch_size,), generator=g).tolist()]
        opt.zero_grad()
        total = 0.0
        for part in token_batches(length_of(batch), judge.max_tokens, batch_size, texts_per_row):
            loss = loss_of([batch[i] for i in part]) * (len(part) / len(batch))
            loss.backward()
            total += float(loss.detach())
        opt.step()
        losses.append(total)
    set_checkpointing(judge.model, False)
    judge.model.eval()
    return sum(losses[-10:]) / len(losses[-10:])


def judge_limits(cfg: DictConfig) -> dict:
    """A reward-model judge's ``batch_size``, ``max_length`` and ``max_tokens`` settings."""
    return {"batch_size": int(cfg.judge.batch_size), "max_length": int(cfg.judge.get("max_length") or WINDOW),
            "max_tokens": int(cfg.judge.get("max_tokens") or MAX_TOKENS)}


def heldout_accuracy(judge: RewardModelJudge, pairs) -> dict:
    """How often the trained judge scores the chosen reply above the rejected one on held-out ``pairs`` (the
    evaluation split: prompts it never trained on), and on how many pairs (``stage.json``)."""
    prompts = list(pairs["prompt"])
    chosen = judge.score(prompts, list(pairs["chosen_text"]))
    rejected = judge.score(prompts, list(pairs["rejected_text"]))
    hits = [float(c > r) for c, r in zip(chosen, rejected)]
    return {"heldout_accuracy": sum(hits) / len(hits) if hits else None, "heldout_pairs": len(hits)}


def bt_stage(cfg: DictConfig, group) -> Path:
    """The in-suite reward model: the group's base model plus a scalar head, fitted on the task's judge split
    (``task.judge_size`` prompts, disjoint from the policy's rows), or on its train split when that is empty;
    with ``judge.train.lora``, LoRA adapters (merged into the saved model) and the whole head are trained."""
    limits = judge_limits(cfg)
    judge_rows = group.data.judge if group.data.judge is not None and len(group.data.judge) else None
    train_spec = {k: v for k, v in OmegaConf.to_container(cfg.judge.train, resolve=True).items()
                  if k != "lora" or v}  # no adapters: the key of a stage configured before they existed
    spec = {"base": group.base, "task": task_settings(cfg.task), "seed": int(cfg.seed),
            "train": train_spec}
    if limits["max_length"] != WINDOW:  # the window changes the model; the token budget only how it is batched
        spec["max_length"] = limits["max_length"]

    def build(tmp: Path) -> dict:
        judge = RewardModelJudge(group.base, new_head=True, seed=int(cfg.seed), **limits)
        train, hp = (group.data.train if judge_rows is None else judge_rows), cfg.judge.train
        if hp.get("lora"):
            judge.model = attach_lora(judge.model, hp.lora, int(cfg.seed), task_type="SEQ_CLS")
        if group.data.kind == "unpaired":
            rows = [{"prompt": p, "completion": c, "label": y}
                    for p, c, y in zip(train["prompt"], train["completion_text"], train["label"])]
            stats = train_binary(judge, rows, int(hp.steps), int(hp.batch_size), float(hp.lr), int(cfg.seed))
        else:
            rows = [{"prompt": p, "chosen": c, "rejected": r}
                    for p, c, r in zip(train["prompt"], train["chosen_text"], train["rejected_text"])]
            stats = train_bradley_terry(judge, rows, int(hp.steps), int(hp.batch_size), float(hp.lr), int(cfg.seed))
        if hp.get("lora"):
            judge.model = judge.model.merge_and_unload()
        if group.data.kind != "unpaired":
            stats |= heldout_accuracy(judge, group.data.eval)
        judge.model.save_pretrained(tmp, safe_serialization=True)
        judge.tok.save_pretrained(tmp)
        return stats | {"rows": len(rows), "split": "train" if judge_rows is None else "judge"}

    stage = build_stage(cfg.cache_dir, "bt", spec, build)
    release_memory()  # the optimizer's state and the training activations
    return stage
