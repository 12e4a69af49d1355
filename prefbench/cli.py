"""The `prefbench` command.

  prefbench                              the default sweep (conf/sweep/default.yaml), then its report
  prefbench sweep [sweep=NAME] [k=v ...] a Hydra multirun preset, then its report
  prefbench run [k=v ...]                one job: method=, model=, task=, seed=, any config key
  prefbench eval RUN_DIR [judge=NAME]    re-evaluate a finished run without retraining
  prefbench agree SWEEP_DIR [judge=NAME]  an LLM judge's agreement with the sweep's judge on its samples
  prefbench export RUN_DIR DEST          a finished run's policy as a Hugging Face model folder with a model card
  prefbench report SWEEP_DIR             table, plots and index.html of a sweep folder
  prefbench report SWEEP_A SWEEP_B       the two side by side, differences highlighted (B/report/compare.html)
  prefbench tune SWEEP_DIR               the tuning protocol's choice from a `sweep=tune` folder
  prefbench methods                      the registered methods: view, reference, init, statistics, source
  prefbench conform [METHOD ...] [--e2e] the checks every method plugin passes (prefbench/conformance.py)
  prefbench perf [k=v ...]               prefbench's trainer against TRL's, side by side
"""
from __future__ import annotations

import difflib
import logging
import os
import sys
from pathlib import Path

from prefbench import CONF_DIR
from prefbench.io.errors import NotApplicable, UserError

GROUPS = ("task", "model", "method", "judge", "trainer", "eval", "stages", "sweep")
_last_summary: dict = {}


def config_root(entry: str) -> Path:
    """The folder a ``hydra.searchpath`` entry names: ``file://DIR`` (or a bare path), or ``pkg://package.sub``."""
    entry = entry.strip(" []'\"")
    if not entry.startswith("pkg://"):
        return Path(entry.removeprefix("file://"))
    from importlib.resources import files

    try:
        return Path(str(files(entry.removeprefix("pkg://"))))
    except ModuleNotFoundError as exc:
        raise UserError(f"hydra.searchpath: {entry} names a package that cannot be imported ({exc})") from exc


def check_overrides(overrides: list[str]) -> None:
    """One clear line for an unknown config-group option, before Hydra starts."""
    from prefbench import methods
    from prefbench.job.config import options

    roots = [CONF_DIR] + [config_root(p) for o in overrides if o.startswith("hydra.searchpath=")
                          for p in o.partition("=")[2].split(",")]
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key.lstrip("+~") not in GROUPS:
            continue
        group = key.lstrip("+~")
        allowed = options(group, roots)
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

    from prefbench.job.config import register_resolvers
    from prefbench.job.run import objective_value, run_job

    register_resolvers()

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def job(cfg):
        global _last_summary
        try:
            _last_summary = run_job(cfg, HydraConfig.get().runtime.output_dir)
        except NotApplicable as exc:  # alone: refused; in a sweep: counted apart (prefbench.job.sweep.status_line)
            print(f"prefbench: {'skipped' if HydraConfig.get().mode.name == 'MULTIRUN' else 'error'}: {exc}",
                  file=sys.stderr)
            _last_summary = {"status": "n/a", "error": str(exc)}
            _remove_if_only_hydra(Path(HydraConfig.get().runtime.output_dir))
        except UserError as exc:  # a job that cannot start is refused, printed once, and a sweep goes on
            print(f"prefbench: error: {exc}", file=sys.stderr)
            _last_summary = {"status": "refused", "error": str(exc)}
            _remove_if_only_hydra(Path(HydraConfig.get().runtime.output_dir))
        return objective_value(cfg, _last_summary)  # Optuna's sweeper wants one number

    sys.argv = [sys.argv[0], *argv]
    job()


def cmd_run(args: list[str]) -> int:
    """One job. Exit 0 done, 1 failed while running, 2 refused (its config cannot run)."""
    from prefbench.job.sweep import list_overrides

    args = list_overrides(args)
    check_overrides(args)
    _hydra(args)
    return {"refused": 2, "n/a": 2, "failed": 1}.get(_last_summary.get("status"), 0)


def cmd_sweep(args: list[str]) -> int:
    """A multirun, then its report. Exit 0 only when every job the sweep asked for is done."""
    from prefbench.job.progress import SweepProgress
    from prefbench.job.config import register_resolvers
    from prefbench.job.run import check_job
    from prefbench.job.sweep import HYDRA_FLAGS, adhoc_sweep_args, list_overrides, plan, record, sweep_dir_overrides

    if any(a in HYDRA_FLAGS for a in args):  # --cfg job, --info, --help ...: Hydra answers, nothing runs
        _hydra(list_overrides(adhoc_sweep_args(args)))
        return 0
    args = adhoc_sweep_args(sweep_dir_overrides(list_overrides(args)))
    check_overrides(args)
    register_resolvers()
    sweep_dir, jobs = plan(args, check_job)
    record(sweep_dir, jobs)
    if len(jobs) != 1 and not any(a.startswith("trainer.progress=") for a in args):
        args = [*args, "trainer.progress=false"]  # one overall line instead of one bar per job
    try:
        with SweepProgress(sweep_dir, jobs):
            _hydra(["--multirun", *args])
    except (Exception, SystemExit) as exc:  # a launcher that dies (a lost worker) must not hide the jobs it lost
        print(f"prefbench: error: the sweep stopped early ({type(exc).__name__}: {exc}); counting its jobs",
              file=sys.stderr)
    best = sweep_dir / "optimization_results.yaml"  # the Optuna sweeper's answer
    if best.exists():
        from omegaconf import OmegaConf

        found = OmegaConf.load(best)
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in found.best_params.items())
        print(f"best trial: {params} "
              f"({found.best_value:.4g}): {best}")
    return _report(sweep_dir)


def _report(sweep_dir: Path) -> int:
    """Build the report, print how many jobs are not done and why; 1 when one is not done, else 0 (a folder
    of ``prefbench perf`` results alone holds no job)."""
    from prefbench.job.sweep import status_line
    from prefbench.report.build import build_report, load_runs

    index = build_report(sweep_dir)
    runs = load_runs(sweep_dir)
    line = status_line(list(runs["status"])) if "status" in runs else "No jobs."
    print(line)
    print(f"report: {index}")
    return 1 if "status" in runs and not line.startswith("All ") else 0


def _remove_if_only_hydra(folder: Path) -> None:
    """Hydra makes a job's folder (its .hydra/ and log) before the job runs; a refused job leaves none."""
    import shutil

    if folder.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in folder.iterdir()):
        shutil.rmtree(folder)


def cmd_methods(args: list[str]) -> int:
    """One line per registered method: its view, reference, init, the statistics it asks for and its
    hyper-parameters, then the source it follows (its module docstring's first line)."""
    import dataclasses
    import inspect

    from prefbench import methods

    print(f"{'name':13} {'view':9} {'reference':9} {'init':5} {'statistics':26} parameters")
    for name, cls in methods.registry().items():
        params = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else ""
        stats = ["sequence"] + sorted(methods.build_method(name).statistics) + ["samples"] * cls.needs_samples \
            + ["state"] * (cls.initial_state is not methods.Method.initial_state)
        source = (inspect.getmodule(cls).__doc__ or cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:13} {cls.view:9} {'yes' if cls.needs_reference else 'no':9} {cls.init:5} {'+'.join(stats):26} "
              f"{params}\n{'':13} {source}")
    return 0


def cmd_eval(args: list[str]) -> int:
    if not args:
        raise UserError("usage: prefbench eval RUN_DIR [judge=NAME] [key=value ...]")
    from prefbench.job.reeval import reevaluate

    summary = reevaluate(Path(args[0]), args[1:])
    print(f"{args[0]}: {summary['status']}")
    return 0


def cmd_agree(args: list[str]) -> int:
    from prefbench.eval.agreement import main as agree_main

    return agree_main(args)


def cmd_export(args: list[str]) -> int:
    if len(args) != 2:
        raise UserError("usage: prefbench export RUN_DIR DEST   (DEST: a new folder for the Hugging Face model)")
    from prefbench.job.export import export

    print(f"{export(Path(args[0]), Path(args[1]))}: weights, tokenizer, generation config and model card")
    return 0


def cmd_report(args: list[str]) -> int:
    """A sweep's report, exiting 1 as `prefbench sweep` does when not every job is done; or two compared."""
    if len(args) not in (1, 2):
        raise UserError("usage: prefbench report SWEEP_DIR   or   prefbench report SWEEP_A SWEEP_B (compare two)")
    if len(args) == 2:
        from prefbench.report.build import load_runs
        from prefbench.report.compare import write_comparison

        a, b = map(Path, args)
        page = write_comparison(a, b, load_runs(a), load_runs(b))
        print(f"comparison: {page}")
        return 0
    return _report(Path(args[0]))


def cmd_tune(args: list[str]) -> int:
    if len(args) != 1:
        raise UserError("usage: prefbench tune SWEEP_DIR   (a folder of `prefbench sweep sweep=tune`)")
    from prefbench.report.tuning import write_tuning

    chosen = write_tuning(Path(args[0]))
    for row in chosen.itertuples(index=False):
        print(f"{row.method} {row.model}: trainer.lr={row[2]:g} strength={row[3]:g} "
              f"(validation score {row.val_score:.3f}, KL {row.kl:.2f})")
    print(f"table: {Path(args[0]) / 'tuning.md'}")
    return 0


def cmd_conform(args: list[str]) -> int:
    from prefbench.conformance import main as conform_main

    return conform_main(args)


def cmd_perf(args: list[str]) -> int:
    from prefbench.perf import main as perf_main

    return perf_main(args)


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "methods": cmd_methods, "eval": cmd_eval, "agree": cmd_agree, "export": cmd_export,
            "report": cmd_report, "tune": cmd_tune, "perf": cmd_perf,
            "conform": cmd_conform}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # "building the font cache", once a machine
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if argv and argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    command, args = (argv[0], argv[1:]) if argv and argv[0] in COMMANDS else ("sweep", argv)
    try:
        if argv and argv[0] not in COMMANDS and "=" not in argv[0] and not argv[0].startswith("-"):
            close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
            raise UserError(f"unknown command {argv[0]!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                            + f" Commands: {', '.join(COMMANDS)}; or key=value overrides for the default sweep")
        from prefbench.train.distributed import refuse_multiprocess

        refuse_multiprocess(command)  # the whole job runs as one process; prefbench.train.trainer.train is multi-process
        return COMMANDS[command](args)
    except UserError as exc:
        print(f"prefbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
