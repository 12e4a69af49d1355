"""Checkpoints: weights in safetensors, optimizer state loaded with ``weights_only=True``.

trainer_state.pt also holds the trainer's progress counters (plain ints, floats, strings and dicts
of them, which ``weights_only`` loads), so a resumed run continues its cost and metrics."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, progress: dict | None = None) -> None:
    """Write to a sibling folder, then swap it in, so a kill never leaves a half-written checkpoint."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "progress": progress or {}}, tmp / "trainer_state.pt")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, dict]:
    """Restore a checkpoint into the given objects; returns its step and progress ((0, {}) when there
    is none; {} for a checkpoint written before progress was saved)."""
    if not (path / "trainer_state.pt").exists():
        old = path.with_name(path.name + ".old")  # killed between the two renames
        if (old / "trainer_state.pt").exists():
            old.rename(path)
        else:
            return 0, {}
    load_model(model, str(path / "model.safetensors"))
    state = torch.load(path / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"]), state.get("progress", {})


def load_weights(model, path: Path):
    load_model(model, str(Path(path) / "model.safetensors"))
    return model
