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


def dpo_trainer(**config) -> Adapter:
    """TRL's DPOTrainer with a loss type or option of its family (``config``: the DPOConfig settings that match
    the prefbench method's defaults), reference log-probs precomputed as prefbench caches them."""
    label = ", ".join(f"{k}={v[0] if isinstance(v, list) and len(v) == 1 else v}" for k, v in config.items())
    return Adapter("trl:DPOTrainer", "trl:DPOConfig", f"DPOTrainer({label})",
                   config_kwargs={**config, "precompute_ref_log_probs": True})


def cpo_trainer(**config) -> Adapter:
    """TRL's CPOTrainer (trl.experimental) for the reference-free SimPO/CPO family."""
    label = ", ".join(f"{k}={v}" for k, v in config.items())
    return Adapter("trl.experimental.cpo:CPOTrainer", "trl.experimental.cpo:CPOConfig", f"CPOTrainer({label})",
                   config_kwargs=config)


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
    # the rest of the family, each TRL setting equal to the prefbench method's default (tests/test_trl_parity_family.py)
    "robust_dpo": dpo_trainer(loss_type=["robust"], label_smoothing=0.1),
    "exo": dpo_trainer(loss_type=["exo_pair"], label_smoothing=1e-3),
    "nca": dpo_trainer(loss_type=["nca_pair"]),
    "bco": dpo_trainer(loss_type=["bco_pair"]),
    "apo_zero": dpo_trainer(loss_type=["apo_zero"]),
    "apo_down": dpo_trainer(loss_type=["apo_down"]),
    "sppo_hard": dpo_trainer(loss_type=["sppo_hard"]),
    "aot": dpo_trainer(loss_type=["aot"]),
    "aot_unpaired": dpo_trainer(loss_type=["aot_unpaired"]),
    "discopop": dpo_trainer(loss_type=["discopop"], discopop_tau=0.05),
    "dpo_norm": dpo_trainer(loss_type=["sigmoid_norm"]),
    "rpo": dpo_trainer(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0]),
    "fdpo": dpo_trainer(loss_type=["sigmoid"], f_divergence_type="js_divergence"),
    "ld_dpo": dpo_trainer(loss_type=["sigmoid"], ld_alpha=0.5),
    "simpo": cpo_trainer(loss_type="simpo", simpo_gamma=1.0, cpo_alpha=0.0),
    "alphapo": cpo_trainer(loss_type="simpo", simpo_gamma=1.0, alpha=0.25, cpo_alpha=0.0),
    "cpo": cpo_trainer(loss_type="sigmoid", cpo_alpha=1.0),
    "slic": cpo_trainer(loss_type="hinge", cpo_alpha=0.1),
    "wpo": dpo_trainer(loss_type=["sigmoid"], use_weighting=True),
    # online: a whole step (sampling, judging, the reference's pass, the update), prefbench/perf/online.py
    "grpo": Adapter("trl:GRPOTrainer", "trl:GRPOConfig", "GRPOTrainer",
                    config_kwargs={"loss_type": "grpo", "scale_rewards": "group", "use_bias_correction_kl": False}),
    "rloo": Adapter("trl:RLOOTrainer", "trl:RLOOConfig", "RLOOTrainer", config_kwargs={"normalize_advantages": False}),
}
