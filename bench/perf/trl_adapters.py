"""TRL's trainer for a method, keyed by the method's name: what ``prefbench perf`` runs on the other side.

An adapter says which TRL trainer and config class to build, which hyper-parameters both sides get, and in
which row format both sides see the data (KTO's trainer takes unpaired rows, so both sides get the same
interleaved desirable/undesirable examples). A method without an adapter is benchmarked on prefbench alone.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field


def paired(rows: list[dict]) -> list[dict]:
    return rows


def unpaired(rows: list[dict]) -> list[dict]:
    """Each pair as a desirable and an undesirable example, interleaved."""
    return [{"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"} for r in rows
            for k in ("chosen", "rejected")]


def prompt_completion(rows: list[dict]) -> list[dict]:
    """TRL's SFT input: the chosen completion of each pair (prefbench's SFT view reads the same)."""
    return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]


@dataclass(frozen=True)
class Adapter:
    trainer: str  # "module:Class" of the TRL trainer
    config: str  # "module:Class" of its config
    label: str  # the name the table shows
    rows: Callable[[list[dict]], list[dict]] = paired  # the rows both sides train on, from paired rows
    trl_rows: Callable[[list[dict]], list[dict]] | None = None  # TRL's format of them, when it differs
    strength_key: str | None = "beta"  # the method field both sides set to perf's `beta`; None: defaults
    config_kwargs: dict = field(default_factory=dict)  # the TRL config's method-specific settings

    def load(self, which: str):
        module, _, name = getattr(self, which).partition(":")
        return getattr(importlib.import_module(module), name)


ADAPTERS: dict[str, Adapter] = {
    "sft": Adapter("trl:SFTTrainer", "trl:SFTConfig", "SFTTrainer", trl_rows=prompt_completion, strength_key=None),
    "dpo": Adapter("trl:DPOTrainer", "trl:DPOConfig", "DPOTrainer",
                   config_kwargs={"loss_type": ["sigmoid"], "precompute_ref_log_probs": True}),
    "ipo": Adapter("trl:DPOTrainer", "trl:DPOConfig", "DPOTrainer(loss_type=ipo)",
                   config_kwargs={"loss_type": ["ipo"], "precompute_ref_log_probs": True}),
    "kto": Adapter("trl:KTOTrainer", "trl:KTOConfig", "KTOTrainer", rows=unpaired,
                   config_kwargs={"precompute_ref_log_probs": True}),
    "orpo": Adapter("trl.experimental.orpo:ORPOTrainer", "trl.experimental.orpo:ORPOConfig",
                    "ORPOTrainer (trl.experimental)", strength_key="lam"),
}
