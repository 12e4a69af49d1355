"""What an evaluation does, typed: the settings of ``conf/eval/*.yaml`` plus the job's seed, sample length and
cache folder, read from the config once (``EvalSpec.from_config``), as ``TrainSpec`` is for training."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class SamplingSpec:
    """Everything that shapes the samples (prefbench.eval.sampling): pure ancestral sampling at ``temperature``."""
    temperature: float = 1.0
    top_p: float = 1.0  # must be 1 (prefbench.job.config): under nucleus sampling the KL to the anchor is undefined
    samples_per_prompt: int = 4
    batch_size: int = 64  # prompts per generate call at samples_per_prompt samples each
    max_new_tokens: int = 64

    def key(self) -> dict:
        """The cache key part of samples drawn with these settings."""
        return asdict(self)


@dataclass(frozen=True)
class EvalSpec:
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    split: str = "eval"  # eval | val: the held-out split evaluated
    bootstrap: int = 1000  # resamples over prompts for the win-rate and KL CIs
    beta: float = 0.1  # of the implicit reward beta * (S_theta - S_anchor) on held-out pairs
    diversity: bool = True  # PID/AID with the offline MiniLM embedder
    curve_fractions: tuple[float, ...] = ()  # of the run's steps, sampled along training (prefbench.eval.curve)
    curve_samples_per_prompt: int = 2
    best_of_n: int = 0  # anchor samples per prompt for the best-of-n baseline; 0: none
    seed: int = 0
    cache_dir: str = "results/.cache"  # where the anchor's and best-of-n's samples are cached

    @classmethod
    def from_config(cls, cfg: DictConfig) -> EvalSpec:
        ev = cfg.eval
        curve = OmegaConf.select(cfg, "eval.curve", default=None) or {}
        return cls(
            sampling=SamplingSpec(float(ev.temperature), float(ev.top_p), int(ev.samples_per_prompt),
                                  int(ev.batch_size), int(cfg.task.max_new_tokens)),
            split=str(ev.get("split", "eval")), bootstrap=int(ev.bootstrap), beta=float(ev.beta),
            diversity=bool(ev.diversity), curve_fractions=tuple(float(f) for f in curve.get("fractions") or ()),
            curve_samples_per_prompt=int(curve.get("samples_per_prompt", 2)),
            best_of_n=int(ev.get("best_of_n") or 0), seed=int(cfg.seed), cache_dir=str(cfg.cache_dir))
