"""Experiment trackers (prefbench/job/track.py): one run logged to TensorBoard, MLflow, W&B and trackio at once, each
read back with that library's own reader; offline, and no API key ever written to disk."""
import json
import os
import struct
import subprocess
import sys

import pytest

from tests.conftest import REPO, SMOKE, prefbench, run_dir

SECRET = "wandb-key-that-must-never-reach-disk-0123456789"


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_one_run_is_logged_to_four_trackers_and_read_back(tmp_path, shared_cache):
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": SECRET, "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
           "TRACKIO_DIR": str(tmp_path / "trackers" / "trackio")}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    prefbench("run", "method=dpo", f"results_dir={tmp_path}", f"cache_dir={shared_cache}",
              "tracker=tensorboard,mlflow,wandb,trackio", *SMOKE, env=env)
    run = run_dir(tmp_path / "runs", "reviews-tiny-xs-dpo-s0")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and "tracker_errors" not in summary
    losses = {r["step"]: r["loss"] for r in _rows(run / "metrics.jsonl") if "loss" in r}
    assert sorted(losses) == [2, 4]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "trackers" / "tensorboard" / "runs" / run.name))
    events.Reload()
    assert {e.step: round(e.value, 5) for e in events.Scalars("train/loss")} == \
        {s: round(v, 5) for s, v in losses.items()}
    assert events.Scalars("eval/win_rate_vs_sft")[-1].value == summary["eval/win_rate_vs_sft"]
    assert "samples" in " ".join(events.Tags()["tensors"])  # the samples table, as markdown text

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'trackers' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("runs")  # one experiment per sweep
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == run.name and logged.data.params["method.name"] == "dpo"
    assert logged.data.params["status"] == "done"
    assert {m.step: m.value for m in client.get_metric_history(logged.info.run_id, "train/loss")} == \
        pytest.approx(losses)
    assert logged.data.metrics["eval/kl"] == summary["eval/kl"]

    (offline,) = (tmp_path / "trackers" / "wandb").glob("offline-run-*")
    history, group = _wandb_history(next(offline.glob("*.wandb")))
    assert group == "runs"  # the sweep, as W&B's run group
    assert {r["_step"]: r["train/loss"] for r in history if "train/loss" in r} == pytest.approx(losses)
    assert [r["eval/win_rate_vs_sft"] for r in history if "eval/win_rate_vs_sft" in r] == \
        [summary["eval/win_rate_vs_sft"]]
    (table,) = offline.glob("files/media/table/samples_*.table.json")
    assert len(json.loads(table.read_text())["data"]) == len(_rows(run / "samples.jsonl"))

    read = "import json, sys, trackio.sqlite_storage as s; print(json.dumps(s.SQLiteStorage.get_logs(*sys.argv[1:])))"
    logs = json.loads(subprocess.run([sys.executable, "-c", read, "prefbench", run.name], capture_output=True,
                                     text=True, check=True, env={**os.environ, "TRACKIO_DIR": env["TRACKIO_DIR"]}
                                     ).stdout)  # trackio fixes its folder at import: a fresh process reads it
    assert {r["step"]: r["train/loss"] for r in logs if "train/loss" in r} == pytest.approx(losses)

    # a second run of the same sweep lands beside the first: one MLflow experiment, one TensorBoard folder
    prefbench("run", "method=sft", f"results_dir={tmp_path}", f"cache_dir={shared_cache}", "tracker=tensorboard,mlflow",
              *SMOKE, env=env)
    assert {r.info.run_name.partition(",")[0].partition("--")[0] for r in client.search_runs(
        [experiment.experiment_id])} == {"reviews-tiny-xs-dpo-s0", "reviews-tiny-xs-sft-s0"}
    assert len(list((tmp_path / "trackers" / "tensorboard" / "runs").iterdir())) == 2

    assert not (REPO / "mlruns").exists()  # nothing written to the working directory
    assert list((tmp_path / "trackers" / "mlflow-artifacts" / "runs").rglob("samples.json"))
    for path in tmp_path.rglob("*"):  # W&B offline writes no key; prefbench hands it to nobody
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path


def _wandb_history(path) -> tuple[list[dict], str]:
    """The history rows and the run group of a W&B offline run file: its LevelDB-log framing (wandb 0.31 ships
    no Python reader) around wandb's own protobuf records."""
    from wandb.proto import wandb_internal_pb2

    data, pos, part, rows, group = path.read_bytes(), 7, b"", [], None
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos: pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or kind == 0:
            pos += left
            continue
        part, pos = part + data[pos + 7: pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            part = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
                             for item in record.history.item})
            elif record.WhichOneof("record_type") == "run":
                group = record.run.run_group
    return rows, group


def test_an_unknown_tracker_is_one_line_before_anything_runs(tmp_path):
    bad = prefbench("run", f"results_dir={tmp_path}", "tracker=tensorbord", check=False)
    assert bad.returncode == 2 and "tracker='tensorbord' is unknown" in bad.stderr and "Traceback" not in bad.stderr
    assert not list(tmp_path.glob("runs/*"))  # no run folder
