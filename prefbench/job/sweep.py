"""What a sweep asked for, and what became of each job.

Before launching, ``plan`` expands the sweep exactly as Hydra's basic sweeper does (the preset's
``hydra.sweeper.params``, then the command line), composes every job's config and names its run folder.
The plan is merged into ``<sweep>/sweep.json``, so a job that never produced a folder (a killed worker, a
lost cluster job, a refused config) is still counted. ``job_statuses`` reads each planned job's folder.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # its split_arguments is the grid
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from prefbench import CONF_DIR
from prefbench.io.errors import NotApplicable, UserError
from prefbench.io.naming import config_digest, run_name, settings
from prefbench.io.results import lock_held, read_json, write_json

MANIFEST = "sweep.json"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
NOT_DONE = ("failed", "killed", "refused", "running", "missing", "partial")


@dataclass
class Job:
    run: str  # folder name inside the sweep folder
    overrides: list[str]
    digest: str
    identity: dict  # task, model, method, seed: the table's columns even for a job that never ran
    refused: str | None = None  # why the job cannot start (validation), known before launch
    not_applicable: str | None = None  # why a swept setting does not apply to the job's method


HYDRA_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--resolve", "--package", "-p",
               "--shell-completion", "-sc")


def sweep_dir_overrides(args: list[str]) -> list[str]:
    """Hydra's ``hydra.sweep.dir=PATH`` names the sweep folder, where the runs, the manifest and the report live:
    prefbench reads it as ``results_dir=`` PATH's parent and ``sweep_name=`` PATH's name (the shared cache
    follows results_dir unless cache_dir= is given)."""
    given = [a for a in args if a.startswith("hydra.sweep.dir=")]
    if not given:
        return args
    if any(a.startswith(("results_dir=", "sweep_name=")) for a in args):
        raise UserError("pass either hydra.sweep.dir=PATH or results_dir=/sweep_name=, not both")
    path = Path(given[-1].partition("=")[2]).expanduser()
    if not path.name or "$" in str(path):
        raise UserError(f"{given[-1]}: give the sweep folder as a plain path (no interpolation)")
    return [a for a in args if a not in given] + [f"results_dir={path.parent}", f"sweep_name={path.name}"]


def list_overrides(args: list[str]) -> list[str]:
    """``tracker=a,b`` names several trackers of every job, not a sweep axis: Hydra gets the list ``[a,b]``."""
    return [f"tracker=[{a.partition('=')[2]}]" if a.startswith("tracker=") and "," in a and "[" not in a else a
            for a in args]


def adhoc_sweep_args(args: list[str]) -> list[str]:
    """Presets name their sweep folder; an ad-hoc grid gets its own, named by a digest of its arguments."""
    if any(a.startswith("sweep=") for a in args):
        return args
    if not args:
        return ["sweep=default"]
    digest = hashlib.sha256("\0".join(sorted(args)).encode()).hexdigest()[:8]
    named = any(a.startswith("sweep_name=") for a in args)
    return ["sweep=adhoc", *([] if named else [f"sweep_name=adhoc-{digest}"]), *args]


def plan(args: list[str], validate) -> tuple[Path, list[Job]]:
    """The sweep folder and every job of the multirun ``args``; ``validate(cfg)`` raises UserError for a
    config that cannot run, which marks the job refused. A sweeper other than Hydra's basic one (Optuna) has
    no grid to plan: no jobs, and the sweep's jobs are its run folders."""
    from hydra import compose, initialize_config_dir

    cli = [a for a in args if not a.startswith("hydra/") and not a.startswith("hydra.")]
    search = [a for a in args if a.startswith("hydra.searchpath=")]  # a user's config folders
    jobs, sweep_dir = [], None
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        try:
            base = compose("config", overrides=search + [a for a in cli if "," not in a.partition("=")[2]],
                           return_hydra_config=True)
        except Exception as exc:  # Hydra's composition errors, e.g. a preset whose sweeper plugin is missing
            hint = " (sweep=optuna needs: pip install 'prefbench[search]')" if "optuna" in str(exc) else ""
            raise UserError(f"cannot compose the sweep: {str(exc).splitlines()[0]}{hint}") from exc
        if base.hydra.sweeper._target_ != BASIC_SWEEPER:  # e.g. Optuna: each trial is chosen from the ones before
            return Path(base.results_dir) / base.sweep_name, []
        params = [f"{k}={v}" for k, v in (base.hydra.sweeper.get("params") or {}).items()]
        loader = GlobalHydra.instance().config_loader()  # glob(*) sweeps list a config group's options
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(params + cli)
        for overrides in BasicSweeper.split_arguments(parsed, None)[0]:
            try:
                cfg = compose("config", overrides=search + overrides)
            except Exception as exc:  # Hydra's composition errors: one line
                raise UserError(f"cannot compose the job {' '.join(overrides)}: {str(exc).splitlines()[0]}") from exc
            sweep_dir = Path(cfg.results_dir) / cfg.sweep_name
            identity = {"task": cfg.task.name, "model": cfg.model.name, "method": cfg.method.name, "seed": int(cfg.seed)}
            job = Job(run_name(cfg, overrides), overrides, config_digest(cfg), identity)
            try:
                validate(cfg)
            except NotApplicable as exc:
                job.not_applicable = str(exc)
            except UserError as exc:
                job.refused = str(exc)
            jobs.append(job)
    return sweep_dir, jobs


def record(sweep_dir: Path, jobs: list[Job]) -> None:
    """Merge ``jobs`` into the sweep folder's manifest (jobs of earlier invocations are kept)."""
    manifest = read_json(sweep_dir / MANIFEST, {"jobs": {}})
    for job in jobs:
        manifest["jobs"][job.run] = {"overrides": job.overrides, "digest": job.digest, "identity": job.identity,
                                     "refused": job.refused, "not_applicable": job.not_applicable}
    write_json(sweep_dir / MANIFEST, manifest)


def planned(sweep_dir: Path) -> dict[str, dict]:
    return read_json(Path(sweep_dir) / MANIFEST, {"jobs": {}})["jobs"]


def job_status(run_dir: Path, job: dict | None = None) -> tuple[str, str | None]:
    """(status, error) of one run folder, against its planned job when there is one."""
    if job and job.get("refused"):
        return "refused", job["refused"]
    if job and job.get("not_applicable"):
        return "n/a", job["not_applicable"]
    summary = read_json(run_dir / "summary.json")
    if summary is None:
        return "missing", ("no summary.json: the job never reported" if run_dir.exists() else
                           "no run folder: the job never started or its worker was lost")
    config = run_dir / "config.yaml"
    if job and config.exists() and config_digest(OmegaConf.to_container(OmegaConf.load(config))) != job["digest"]:
        return "refused", f"{run_dir.name} holds a run with a different config"
    if summary.get("status") == "running" and not lock_held(run_dir / ".lock"):
        return "killed", (f"killed during {summary.get('phase', 'its start')}: no process runs it any more (out of "
                          f"memory, kill -9, a preempted node); run it again to resume")
    return summary.get("status", "missing"), summary.get("error")


def status_line(statuses: list[str]) -> str:
    """'All 15 jobs done.' or '3 of 15 jobs are not done: 1 failed, 2 missing.'; jobs whose swept setting does
    not apply to their method are counted apart (n/a), never as done."""
    na = sum(s == "n/a" for s in statuses)
    statuses = [s for s in statuses if s != "n/a"]
    apart = f" {na} more not applicable (a swept setting that their method does not have)." if na else ""
    bad = Counter(s for s in statuses if s != "done")
    if not bad:
        return f"All {len(statuses)} jobs done." + apart
    detail = ", ".join(f"{bad[s]} {s}" for s in NOT_DONE if bad[s])
    return f"{sum(bad.values())} of {len(statuses)} jobs are not done: {detail}." + apart


def run_rows(sweep_dir: Path) -> list[dict]:
    """One row per planned job and per run folder: its summary, status, error and flattened config."""
    jobs = planned(sweep_dir)
    folders = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and ((p / "summary.json").exists() or (p / "config.yaml").exists()))
    rows = []
    for name in dict.fromkeys([*jobs, *folders]):
        run, job = sweep_dir / name, jobs.get(name)
        status, error = job_status(run, job)
        config = run / "config.yaml"
        flat = flatten(settings(OmegaConf.to_container(OmegaConf.load(config)))) if config.exists() else {}
        rows.append({"run_dir": str(run), "run": name, **(job or {}).get("identity", {}),
                     **read_json(run / "summary.json", {}), "status": status, "error": error,
                     **{f"config.{k}": v for k, v in flat.items()}})
    return rows


def swept_keys(rows: list[dict]) -> list[str]:
    """Config keys that take more than one value among the runs of one (method, model), besides the seed.
    Keys that only follow the method or the model (its hyper-parameters, its architecture, the values its
    ``tuned`` table picks per model) are one setting of that (method, model), not a swept axis."""
    keys = sorted({k for r in rows for k in r if k.startswith("config.")})
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        if any(k.startswith("config.") for k in r):
            cells.setdefault((r.get("config.method.name"), r.get("config.model.name")), []).append(r)
    return [key.removeprefix("config.") for key in keys if key != "config.seed"
            and any(len({repr(r.get(key)) for r in cell}) > 1 for cell in cells.values())]


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value if not isinstance(value, (list, dict)) else repr(value)
    return out
