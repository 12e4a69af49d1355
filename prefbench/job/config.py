"""Validation of a job's config: one clear line naming the key and what is allowed."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prefbench import CONF_DIR
from prefbench.eval.judges import check_judge
from prefbench.io.errors import NotApplicable, UserError
from prefbench.model.models import scratch_config
from prefbench.methods import Method, StrengthNotApplicable, apply_strength, build_method, registry, view_spec

INTEGER = ("seed", "threads", "stages.base.seed")  # read with int() later: a string must stop here, with one line
POSITIVE = ["trainer.steps", "trainer.batch_size", "trainer.grad_accum", "trainer.lr",
            "stages.base.steps", "stages.sft.steps", "eval.samples_per_prompt", "eval.temperature", "task.max_length"]


def options(group: str, roots=(CONF_DIR,)) -> list[str]:
    """The names a config group offers (its yaml files) under the config roots."""
    return sorted({p.stem for root in roots for p in (Path(root) / group).glob("*.yaml")})

def register_resolvers() -> None:
    """The config's own interpolations: ``${run_name:}``, ``${mul:a,b}``, ``${div:a,b}``, ``${tuned:...}``."""
    from prefbench.io.naming import hydra_run_name

    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", hydra_run_name)
        OmegaConf.register_new_resolver("mul", lambda a, b: float(a) * float(b))
        OmegaConf.register_new_resolver("div", lambda a, b: float(a) / float(b))
        OmegaConf.register_new_resolver("tuned", tuned_value)


def compose_config(overrides: list[str]) -> DictConfig:
    """The job config that ``prefbench run OVERRIDES`` would run (sweep axes left out), without starting Hydra."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    fixed = [o for o in overrides if o.startswith("hydra.searchpath=")
             or ("," not in o and not o.startswith(("hydra", "-")))]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=fixed)


def validate(cfg: DictConfig) -> None:
    for key in INTEGER:
        value = OmegaConf.select(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"{key} must be an integer (got {value!r})")
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key)
        by_epochs = key.endswith(".steps") and OmegaConf.select(cfg, key.replace(".steps", ".epochs"))
        if value is not None and not value > 0 and not by_epochs:
            raise UserError(f"{key} must be > 0 (got {value})")
    if cfg.init not in ("auto", "base", "sft"):
        raise UserError(f"init={cfg.init!r} is not allowed; allowed: auto, base, sft")
    check_budget(cfg)
    check_online_temperature(cfg)
    if OmegaConf.select(cfg, "eval.top_p") is not None and cfg.eval.top_p != 1:
        raise UserError(f"eval.top_p must be 1 (got {cfg.eval.top_p}): the KL to the anchor is estimated on the "
                        f"samples, and under nucleus sampling it is undefined wherever the anchor's nucleus leaves "
                        f"out a sampled token; use eval.temperature to sharpen the samples")
    if cfg.task.get("n_pairs") is not None and cfg.task.n_pairs < 1:
        raise UserError(f"task.n_pairs must be > 0 (got {cfg.task.n_pairs}): the dataset would be empty")
    if cfg.model.get("source") == "scratch":  # an unknown model_type or shape stops here, not in the base stage
        scratch_config(OmegaConf.to_container(cfg.model.arch), vocab_size=8)
    check_splits(cfg)
    check_curve(cfg)
    check_judge(cfg)
    if cfg.task.get("source", "builtin") != "builtin":  # an unreadable file or one without valid rows stops here
        check_data(cfg)


def check_online_temperature(cfg: DictConfig) -> None:
    """An online method samples at ``eval.temperature`` and trains on log-probs at temperature 1: the two agree
    only at 1, so its ratios and KL would be those of another distribution than the one sampled."""
    method = registry().get(cfg.method.name)
    temperature = OmegaConf.select(cfg, "eval.temperature", default=1.0)
    if method is not None and method.needs_samples and temperature != 1:
        raise UserError(f"method={cfg.method.name} trains on its samples with log-probs at temperature 1, so it "
                        f"samples at eval.temperature=1 too (got {temperature})")


def check_budget(cfg: DictConfig) -> None:
    if cfg.budget not in ("matched", "matched_flops", "per_stage"):
        raise UserError(f"budget={cfg.budget!r} is not allowed; allowed: matched, matched_flops, per_stage")
    if cfg.budget != "per_stage" and bool(cfg.trainer.get("epochs")) != bool(cfg.stages.sft.get("epochs")):
        raise UserError(f"budget={cfg.budget} adds the SFT stage's length to runs from the base model, so trainer and "
                        "stages.sft must both count steps or both count epochs (or set budget=per_stage)")
    if cfg.budget == "matched_flops" and cfg.trainer.get("epochs"):
        raise UserError("budget=matched_flops gives online runs the steps of the offline run's FLOPs: "
                        "trainer.steps counts them, not trainer.epochs")


def check_splits(cfg: DictConfig) -> None:
    """The held-out splits' sizes (prompts) and the split the evaluation reads."""
    for key in ("eval_size", "val_size"):
        value = cfg.task.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise UserError(f"task.{key} must be a whole number of prompts >= 0 (got {value!r})")
    split = OmegaConf.select(cfg, "eval.split", default="eval")
    if split not in ("eval", "val"):
        raise UserError(f"eval.split={split!r} is not allowed; allowed: eval, val")
    if split == "val" and not cfg.task.get("val_size"):
        raise UserError("eval.split=val needs validation prompts: set task.val_size > 0")


def check_curve(cfg: DictConfig) -> None:
    """Evaluation along training and the best-of-n baseline (prefbench/eval/curve.py)."""
    fractions = OmegaConf.select(cfg, "eval.curve.fractions", default=None) or []
    bad = [f for f in fractions if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1]
    if bad:
        raise UserError(f"eval.curve.fractions must be fractions of the run in [0, 1) (got {bad[0]!r}); "
                        f"the end of the run is always evaluated")
    k = OmegaConf.select(cfg, "eval.curve.samples_per_prompt", default=1)
    if fractions and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise UserError(f"eval.curve.samples_per_prompt must be a whole number >= 1 (got {k!r})")
    n = OmegaConf.select(cfg, "eval.best_of_n", default=0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"eval.best_of_n must be a whole number of anchor samples >= 0 (got {n!r}); 0 turns it off")


def check_data(cfg: DictConfig) -> None:
    """The dataset is read and cleaned before any stage is built (the job reuses the result), and a
    method that needs pairs is refused unpaired data."""
    from prefbench.data.prepare import load_clean

    clean, source = load_clean(cfg.task, int(cfg.seed))
    view = view_spec(method_from_config(cfg.method, cfg.strength).view)
    if clean.kind not in view.kinds:
        usable = sorted(name for name, cls in registry().items() if clean.kind in view_spec(cls.view).kinds)
        rows = {"paired": "paired rows (prompt/chosen/rejected)", "unpaired": "unpaired rows (prompt/completion/label)"}
        raise UserError(f"method={cfg.method.name} needs {' or '.join(rows.get(k, k) for k in view.kinds)}; {source} "
                        f"is {rows.get(clean.kind, clean.kind)}; methods for {clean.kind} data: {', '.join(usable)}")


def tuned_value(key: str, fallback=None, *, _root_: DictConfig):
    """``${tuned:KEY,FALLBACK}``: the job's method's tuned value of KEY for the job's model, from the
    method yaml's ``tuned`` table (model name -> values chosen by ``sweep=tune``, prefbench/report/tuning.py); else FALLBACK."""
    table = OmegaConf.select(_root_, "method.tuned", default=None) or {}
    row = table.get(OmegaConf.select(_root_, "model.name", default=None)) or {}
    value = row.get(key, fallback)
    if value is None:
        raise UserError(f"method {_root_.method.name} has no tuned {key} for model {_root_.model.name} and no default")
    return value


def method_from_config(method_cfg: DictConfig, strength: float = 1.0) -> Method:
    """The job's method: the yaml's hyper-parameters with ``strength`` applied to the fields the method marks
    (``prefbench.methods.scaled_by_strength``), so a plugin gets the same treatment as a built-in."""
    params = OmegaConf.to_container(method_cfg, resolve=True)
    params.pop("tuned", None)  # the tuned table feeds the values above it; it is not a hyper-parameter
    name = params.pop("name")
    try:
        return build_method(name, **apply_strength(name, params, float(strength)))
    except StrengthNotApplicable as exc:
        raise NotApplicable(str(exc)) from exc
    except ValueError as exc:
        raise UserError(str(exc)) from exc
