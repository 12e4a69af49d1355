"""`prefbench perf`: prefbench's trainer against TRL's on identical inputs, side by side.

    prefbench perf [methods=[sft,dpo,ipo,kto,orpo]] [steps=20] [reps=3] [batch_size=8] [seq_len=256]
                   [hidden=256] [layers=4] [vocab=2048] [lr=1e-4] [beta=0.1] [threads=2] [baseline=orpo]
                   [gradient_checkpointing=true] [packing=true] [profile=false] [data=reviews|hh]
                   [hh_path=$PREFBENCH_HH_PATH or ../shared/data/hh-rlhf-harmless-base/test.jsonl.gz] [out=results/perf]
                   [samples=4] [max_new_tokens=64] [device=auto|cpu|cuda] [model=NAME] [peak_tflops=X]

For each method, trials alternate prefbench / TRL for ``reps`` repetitions, each in a fresh process (so
peak memory is per trial). Both start from the same random-init Llama, see the same rows in the same order
(no shuffling), with AdamW at a constant learning rate, clipping at 1.0, no warm-up, and reference
log-probs precomputed before training on both sides. Each side's tokens/s is the tokens it trains over the
wall time of its training call; CPU seconds and the load average are recorded beside it, and contended
trials are flagged. Online methods (grpo, rloo) are timed over whole steps, sampling included
(``prefbench.perf.online``): ``samples`` per prompt of at most ``max_new_tokens`` tokens, scored by the review task's
gold reward. TRL's trainer for a method comes from ``prefbench.perf.trl_adapters``; a method without
an adapter (a plugin) is measured on prefbench alone. data=reviews: the built-in review task, lengthened
to 50-256 tokens; data=hh: real HH-RLHF rows, only those that fit in seq_len untruncated (the two
trainers truncate differently, and inputs must be identical). model=NAME takes the shape of a from-scratch model
yaml in conf/model (e.g. pythia-1b-scratch, qwen2.5-0.5b-scratch) instead of the hidden x layers Llama. device=cuda
refuses to run without a CUDA device; device=cpu hides the GPUs from the trials. MFU (6 N tokens/s over the
peak) is printed where the peak is known: the GPU's dense bf16 peak (prefbench.perf.measure), or peak_tflops=.
The step/BASELINE column (``step_cost_vs_<baseline>``) gives each method that anchors to a cached reference
(``needs_reference``, offline) its prefbench seconds per step over those of the ``baseline`` method, when
that is one of ``methods`` (baseline=null: none); with the default, reference-free baseline, what the
cached reference costs.
"""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from prefbench.io.errors import UserError
from prefbench import CONF_DIR
from prefbench.perf.measure import contention, environment, mfu, peak_tflops
from prefbench.perf.trl_adapters import ADAPTERS

DEFAULTS = {"methods": ["sft", "dpo", "ipo", "kto", "orpo"], "steps": 20, "reps": 3, "batch_size": 8,
            "seq_len": 256, "hidden": 256, "layers": 4, "vocab": 2048, "lr": 1e-4, "beta": 0.1, "threads": 2,
            "baseline": "orpo",  # the method the step/BASELINE column divides by
            "gradient_checkpointing": True,  # TRL 1.16's default; both sides always use the same setting
            "packing": True,  # prefbench's padding-free forwards (false: length groups), for ablation
            "profile": False,  # torch.profiler tables of each side's training, saved beside the JSON
            "data": "reviews", "hh_path": os.environ.get("PREFBENCH_HH_PATH", "../shared/data/hh-rlhf-harmless-base/test.jsonl.gz"),
            "out": "results/perf", "samples": 4, "max_new_tokens": 64,
            "device": "auto", "model": None, "peak_tflops": None}
USAGE = __doc__.split("\n\n")[1]


def parse(args: list[str]):
    """The benchmark's settings: DEFAULTS with ``key=value`` overrides; an unknown key or method is refused."""
    items = [a for a in args if "=" in a]
    if len(items) != len(args):
        raise UserError(f"perf takes key=value settings, got {next(a for a in args if '=' not in a)!r}\n{USAGE}")
    unknown = sorted({a.partition("=")[0] for a in items} - set(DEFAULTS))
    if unknown:
        raise UserError(f"perf: unknown setting {unknown[0]!r}; allowed: {', '.join(DEFAULTS)}")
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(items))
    if importlib.util.find_spec("trl") is None:
        raise UserError("perf runs TRL's trainers on the other side and TRL is not installed: "
                        "pip install 'prefbench[perf]'")
    from prefbench.methods import registry

    missing = [m for m in cfg.methods if m not in registry()]
    if missing:
        raise UserError(f"perf: method {missing[0]!r} is not registered; registered: {', '.join(registry())}")
    check_baseline(cfg, given="baseline" in {a.partition("=")[0] for a in items})
    check_device(cfg.device)
    scratch = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")
                     if OmegaConf.load(p).get("source") == "scratch")
    if cfg.model is not None and cfg.model not in scratch:
        raise UserError(f"perf: model={cfg.model!r} is not a from-scratch model yaml; allowed: {', '.join(scratch)}")
    return cfg


def check_baseline(cfg, given: bool) -> None:
    """``baseline`` names a registered method, and one of ``methods`` when the command line sets it."""
    from prefbench.methods import registry

    if cfg.baseline is not None and cfg.baseline not in registry():
        raise UserError(f"perf: baseline={cfg.baseline!r} is not a registered method; pass one of methods= "
                        f"or baseline=null")
    if given and cfg.baseline is not None and cfg.baseline not in cfg.methods:
        raise UserError(f"perf: baseline={cfg.baseline!r} is not one of methods=[{', '.join(cfg.methods)}]; "
                        f"add it to methods= or pass baseline=null")


def step_costs(table: list[dict], baseline: str | None) -> None:
    """Add ``step_cost_vs_<baseline>`` to the row of each method with a cached reference (``needs_reference``,
    offline): its prefbench seconds per step over the baseline's. Nothing when the baseline was not measured."""
    from prefbench.methods import registry

    rows, methods = {r["method"]: r for r in table}, registry()
    if baseline not in rows:
        return
    for name, row in rows.items():
        cls = methods.get(name)
        if name != baseline and cls is not None and cls.needs_reference and not cls.needs_samples:
            row[f"step_cost_vs_{baseline}"] = row["prefbench_seconds"] / rows[baseline]["prefbench_seconds"]


def check_device(device: str) -> None:
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"perf: device={device!r} is not allowed; allowed: auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"perf: device=cuda, but torch {torch.__version__} sees no CUDA device "
                        f"(built for CUDA {torch.version.cuda or 'none: a CPU-only wheel'})")


def trial_main(argv: list[str]) -> int:
    from prefbench.perf.sides import run_prefbench, run_trl

    impl, method, cfg = argv[0], argv[1], OmegaConf.create(json.loads(argv[2]))
    try:
        out = (run_prefbench if impl == "prefbench" else run_trl)(cfg, method)
    except UserError as exc:
        print("PERF_ERROR " + json.dumps(str(exc)))
        return 2
    print("PERF_RESULT " + json.dumps(out))
    return 0


def _trial(impl: str, method: str, cfg) -> dict:
    hide_gpus = {"CUDA_VISIBLE_DEVICES": ""} if cfg.device == "cpu" else {}
    proc = subprocess.run([sys.executable, "-m", "prefbench.perf", "--trial", impl, method,
                           json.dumps(OmegaConf.to_container(cfg))], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **hide_gpus})
    error = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PERF_ERROR ")), None)
    if error is not None:
        raise UserError(json.loads(error.removeprefix("PERF_ERROR ")))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PERF_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{impl} {method} trial failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("PERF_RESULT "))


def summarise(method: str, by: dict[str, list[dict]], cores: int, tflops: float | None = None) -> dict:
    """One table row: each side's median tokens/s (its own tokens over its own wall seconds), MFU where the
    peak is known, CPU seconds, peak memory and final loss, the ratios, and why the trials look contended."""
    row = {"method": method, "trl_trainer": ADAPTERS[method].label if method in ADAPTERS else ""}
    n_params = by["prefbench"][0]["n_params"]  # the same model on both sides
    for impl, trials in by.items():
        row[f"{impl}_tokens_per_s"] = statistics.median(t["tokens"] / t["seconds"] for t in trials)
        row[f"{impl}_mfu"] = mfu(n_params, row[f"{impl}_tokens_per_s"], tflops)
        row[f"{impl}_seconds"] = statistics.median(t["seconds"] for t in trials)
        row[f"{impl}_cpu_seconds"] = statistics.median(t["cpu_seconds"] for t in trials)
        row[f"{impl}_peak_mb"] = statistics.median(t["peak_mb"] for t in trials)
        row[f"{impl}_final_loss"] = trials[0]["losses"][-1]
        row[f"{impl}_tokens"] = trials[0]["tokens"]
        row[f"{impl}_contention"] = contention(trials, cores)
        if "rollout_seconds" in trials[0]:  # online: the median trial's split of its step
            median = sorted(trials, key=lambda t: t["seconds"])[len(trials) // 2]
            row[f"{impl}_rollout_share"] = {k: v / median["seconds"] for k, v in median["rollout_seconds"].items()}
    if "trl" in by:
        row["speed_ratio"] = row["prefbench_tokens_per_s"] / row["trl_tokens_per_s"]
        row["time_ratio"] = row["trl_seconds"] / row["prefbench_seconds"]  # the same rows and steps
        row["memory_ratio"] = row["prefbench_peak_mb"] / max(row["trl_peak_mb"], 1e-9)
    return row


def main(args: list[str]) -> int:
    from prefbench.io.results import write_json

    if {"-h", "--help", "help"} & set(args):
        print(USAGE)
        return 0
    cfg = parse(args)
    results: dict[str, dict[str, list]] = {}
    alone = [m for m in cfg.methods if m not in ADAPTERS]
    for method in alone:
        print(f"  {method}: no TRL adapter (prefbench/perf/trl_adapters.py): prefbench is measured alone, "
              f"with the method's default hyper-parameters", flush=True)
    for rep in range(int(cfg.reps)):
        for method in cfg.methods:
            sides = ("prefbench",) if method in alone else ("prefbench", "trl") if rep % 2 == 0 else ("trl", "prefbench")
            for impl in sides:
                r = _trial(impl, method, cfg)
                results.setdefault(method, {}).setdefault(impl, []).append(r)
                print(f"  rep {rep} {method:5} {impl:9} {r['seconds']:7.2f} s wall {r['cpu_seconds']:7.2f} s CPU  "
                      f"{r['peak_mb']:7.1f} MiB  loss {r['losses'][-1]:.4f}", flush=True)
    cores = os.cpu_count() or 1
    env = environment(int(cfg.threads))
    tflops, peak_source = peak_tflops(env["device"], cfg.peak_tflops)
    env |= {"peak_tflops": tflops, "peak_source": peak_source}
    table = [summarise(method, by, cores, tflops) for method, by in results.items()]
    step_costs(table, cfg.baseline)
    step_cost = f"step_cost_vs_{cfg.baseline}"
    first = next(iter(next(iter(results.values()))["prefbench"]))
    shape = f"model={cfg.model}" if cfg.model else f"hidden={cfg.hidden} layers={cfg.layers}"
    print(f"\ndevice={env['device']} data={cfg.data} steps={cfg.steps} batch={cfg.batch_size} seq_len<={cfg.seq_len} "
          f"{shape} vocab={first['vocab']} params={first['n_params']:,} threads={cfg.threads} "
          f"gradient_checkpointing={cfg.gradient_checkpointing} reps={cfg.reps} (medians)")
    print(f"{'method':6} {'prefbench tok/s':>15} {'TRL tok/s':>10} {'ratio':>6} {'time ratio':>10} {'pb MiB':>8} "
          f"{'TRL MiB':>8} {'pb loss':>8} {'TRL loss':>8} {'step/' + str(cfg.baseline).upper():>9}")
    nan = float("nan")
    for r in table:
        print(f"{r['method']:6} {r['prefbench_tokens_per_s']:15.0f} {r.get('trl_tokens_per_s', nan):10.0f} "
              f"{r.get('speed_ratio', nan):6.2f} {r.get('time_ratio', nan):10.2f} {r['prefbench_peak_mb']:8.1f} "
              f"{r.get('trl_peak_mb', nan):8.1f} {r['prefbench_final_loss']:8.4f} {r.get('trl_final_loss', nan):8.4f} "
              f"{r.get(step_cost, nan):9.2f}")
        if "prefbench_rollout_share" in r:
            parts = ", ".join(f"{k} {v:.0%}" for k, v in r["prefbench_rollout_share"].items())
            print(f"  {r['method']}: prefbench's step: {parts}, the update (forward, backward, optimizer) the rest")
        for impl in ("prefbench", "trl"):
            if r.get(f"{impl}_contention"):
                print(f"  warning: {r['method']} {impl} trials look contended ({r[f'{impl}_contention']}); "
                      f"rerun with nothing else running", flush=True)
    path = Path(cfg.out) / f"perf-{time.strftime('%Y%m%d-%H%M%S')}.json"
    if tflops:
        print(f"MFU (6 N tokens/s over {tflops:g} TFLOP/s, {peak_source}): " + ", ".join(
            f"{r['method']} {r['prefbench_mfu']:.1%}" + (f" (TRL {r['trl_mfu']:.1%})" if r.get("trl_mfu") else "")
            for r in table))
    else:
        print(f"MFU: the peak FLOP/s is {peak_source}")
    write_json(path, {"config": OmegaConf.to_container(cfg), "environment": env,
                      "model": {"vocab": first["vocab"], "n_params": first["n_params"]}, "table": table,
                      "trials": results})
    print(f"saved: {path}  (plots: prefbench report {cfg.out})")
    if cfg.profile:
        print(f"profiles (timings above are inflated by the profiler): {cfg.out}/profile-METHOD-IMPL.txt")
    return 0
