"""The `prefbench` command.

  prefbench                              the default sweep (conf/sweep/default.yaml), then its report
  prefbench sweep [sweep=NAME] [k=v ...] a Hydra multirun preset, then its report
  prefbench run [k=v ...]                one job: method=, model=, task=, seed=, any config key
  prefbench eval RUN_DIR [judge=NAME]    re-evaluate a finished run without retraining
  prefbench report SWEEP_DIR             table, plots and index.html of a sweep folder
  prefbench methods                      the registered methods
  prefbench perf [k=v ...]               prefbench's trainer against TRL's, side by side
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from bench import CONF_DIR
from bench.errors import UserError

GROUPS = ("task", "model", "method", "judge", "trainer", "eval", "stages", "sweep")
_last_summary: dict = {}


IDENTITY_KEYS = ("method.", "strength=", "init=", "fault=")


def _run_name(task: str, model: str, method: str, seed, override_dirname: str) -> str:
    """Run folder name: the job's identity, then overrides of the method's hyper-parameters
    (e.g. method.beta=0.3, strength=2). Other settings are the sweep's; run_job refuses to reuse a
    folder whose saved config differs."""
    extra = [o for o in override_dirname.split(",") if o.startswith(IDENTITY_KEYS)]
    return ",".join([f"{task}-{model}-{method}-s{seed}", *extra])


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", _run_name)
        OmegaConf.register_new_resolver("mul", lambda a, b: float(a) * float(b))


def check_overrides(overrides: list[str]) -> None:
    """One clear line for an unknown config-group option, before Hydra starts."""
    import methods

    roots = [CONF_DIR] + [Path(p.strip(" []'\"").removeprefix("file://")) for o in overrides
                          if o.startswith("hydra.searchpath=") for p in o.partition("=")[2].split(",")]
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key.lstrip("+~") not in GROUPS:
            continue
        group = key.lstrip("+~")
        allowed = sorted({p.stem for root in roots for p in (root / group).glob("*.yaml")})
        for v in value.split(","):
            if v not in allowed and v != "null":
                extra = ""
                if group == "method" and v in methods.registry():
                    extra = f" (method {v!r} is registered but has no conf/method/{v}.yaml; add one, or pass " \
                            f"hydra.searchpath=[pkg://yourpackage.conf])"
                raise UserError(f"{group}={v!r} is unknown; allowed: {', '.join(allowed)}{extra}")


def _hydra(argv: list[str]) -> None:
    """Run Hydra's main with ``argv`` as its command line."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from bench.run import run_job

    _register_resolvers()

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def job(cfg):
        global _last_summary
        try:
            _last_summary = run_job(cfg, HydraConfig.get().runtime.output_dir)
        except UserError as exc:  # a job that cannot start is reported, and a sweep goes on
            print(f"prefbench: error: {exc}", file=sys.stderr)
            _last_summary = {"status": "failed", "error": str(exc)}
        return _last_summary

    sys.argv = [sys.argv[0], *argv]
    job()


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    _register_resolvers()
    fixed = [o for o in overrides if "," not in o and not o.startswith(("hydra", "-"))]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=fixed)


def cmd_run(args: list[str]) -> int:
    check_overrides(args)
    _hydra(args)
    if _last_summary.get("status") == "failed":
        print(f"prefbench: error: {_last_summary.get('error')}", file=sys.stderr)
        return 1
    return 0


def cmd_sweep(args: list[str]) -> int:
    if not any(a.startswith("sweep=") for a in args):
        args = ["sweep=default", *args]
    check_overrides(args)
    cfg = compose_config(args)
    _hydra(["--multirun", *args])
    from bench.report import build_report

    index = build_report(Path(cfg.results_dir) / cfg.sweep_name)
    print(f"report: {index}")
    return 0


def cmd_methods(args: list[str]) -> int:
    import dataclasses

    import methods

    print(f"{'name':8} {'view':9} {'reference':9} {'init':5} parameters")
    for name, cls in methods.registry().items():
        params = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else ""
        print(f"{name:8} {cls.view:9} {'yes' if cls.needs_reference else 'no':9} {cls.init:5} {params}")
    return 0


def cmd_eval(args: list[str]) -> int:
    if not args:
        raise UserError("usage: prefbench eval RUN_DIR [judge=NAME] [key=value ...]")
    from bench.reeval import reevaluate

    summary = reevaluate(Path(args[0]), args[1:])
    print(f"{args[0]}: {summary['status']}")
    return 0


def cmd_report(args: list[str]) -> int:
    if len(args) != 1:
        raise UserError("usage: prefbench report SWEEP_DIR")
    from bench.report import build_report

    print(f"report: {build_report(Path(args[0]))}")
    return 0


def cmd_perf(args: list[str]) -> int:
    from bench.perf import main as perf_main

    return perf_main(args)


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "methods": cmd_methods, "eval": cmd_eval,
            "report": cmd_report, "perf": cmd_perf}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if argv and argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    command, args = (argv[0], argv[1:]) if argv and argv[0] in COMMANDS else ("sweep", argv)
    try:
        return COMMANDS[command](args)
    except UserError as exc:
        print(f"prefbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
