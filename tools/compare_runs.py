"""Are two sweeps' results the same to the last decimal? ``python tools/compare_runs.py SWEEP_A SWEEP_B``

Pairs the run folders of two sweeps by (method, model, seed) and compares every ``summary.json`` value
(except timings, run names and cache hits), every logged training metric (except tokens/s), and the
per-prompt, sample, curve and best-of-n files byte for byte. For checking that a refactor left the main
job's numbers unchanged: ``prefbench sweep sweep=default sweep_name=verify``, then this against
``results/default``. Exit status 1 when anything differs.
"""
import json
import sys
from pathlib import Path

TIMING = ("cost/", "wall_seconds", "run", "reference_cache_hit", "method/", "train/tokens_per_s")
FILES = ("prompts.jsonl", "samples.jsonl", "curve.jsonl", "best_of_n.jsonl")


def runs(sweep: Path) -> dict:
    out = {}
    for path in sweep.iterdir():
        if (path / "summary.json").exists():
            s = json.loads((path / "summary.json").read_text())
            out[s["method"], s["model"], s["seed"]] = path, s
    return out


def metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
            for line in (path / "metrics.jsonl").read_text().splitlines()]


def main(a: str, b: str) -> int:
    ra, rb = runs(Path(a)), runs(Path(b))
    differences, values = [], 0
    for key in sorted(set(ra) | set(rb), key=str):
        if key not in ra or key not in rb:
            differences.append(f"{key}: only in {'the first' if key in ra else 'the second'}")
            continue
        (pa, sa), (pb, sb) = ra[key], rb[key]
        for k in sorted(set(sa) | set(sb)):
            if not k.startswith(TIMING):
                values += 1
                if sa.get(k) != sb.get(k):
                    differences.append(f"{key} {k}: {sa.get(k)!r} != {sb.get(k)!r}")
        for name in FILES:
            if (pa / name).exists() != (pb / name).exists() or (
                    (pa / name).exists() and (pa / name).read_bytes() != (pb / name).read_bytes()):
                differences.append(f"{key} {name} differs")
        if metrics(pa) != metrics(pb):
            differences.append(f"{key} metrics.jsonl differs")
    print("\n".join(differences))
    print(f"{len(ra)} runs, {values} summary values, {len(FILES)} files and the training metrics of each compared: "
          f"{len(differences)} difference(s)")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
