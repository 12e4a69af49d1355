"""Per-sequence completion log-probs, computed only at the positions that count."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.views import Packed, View, pack
from methods import SeqLogps


def _body_and_head(model):
    """The transformer body (hidden states) and the LM head, for models that split that way."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    head = inner.get_output_embeddings()
    body = getattr(inner, inner.base_model_prefix, None)
    if head is None or body is None or getattr(inner.config, "final_logit_softcapping", None):
        return None, None
    return body, head


def token_logps(model, batch: Packed) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion tokens, flattened, and the batch row of each.

    Hidden states are computed for every position but the vocabulary projection only where a
    completion token is predicted, so no (batch, length, vocab) logits tensor is materialised.
    """
    target_mask = batch.completion_mask[:, 1:].bool()
    targets = batch.input_ids[:, 1:][target_mask]
    rows = target_mask.nonzero()[:, 0]
    body, head = _body_and_head(model)
    if body is not None:
        hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)[0]
        logits = head(hidden[:, :-1][target_mask])
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        logits = logits[:, :-1][target_mask]
    return -F.cross_entropy(logits.float(), targets, reduction="none"), rows


def sequence_logps(model, batch: Packed) -> dict[str, SeqLogps]:
    """S(y) and n(y) for every sequence of the batch, split by role."""
    logps, rows = token_logps(model, batch)
    n_rows = batch.input_ids.shape[0]
    sums = torch.zeros(n_rows, device=logps.device, dtype=logps.dtype).index_add(0, rows, logps)
    counts = batch.completion_mask[:, 1:].sum(dim=1)
    return {role: SeqLogps(sums[s], counts[s]) for role, s in batch.slices.items()}


@torch.no_grad()
def score_view(model, view: View, pad_id: int, batch_size: int, device) -> dict[str, torch.Tensor]:
    """``{role}.sum`` and ``{role}.n`` for every example of ``view`` (NaN where an example lacks the role)."""
    model.eval()
    out = {f"{r}.{k}": torch.full((len(view),), float("nan")) for r in view.roles for k in ("sum", "n")}
    for start in range(0, len(view), batch_size):
        batch = pack(view, list(range(start, min(start + batch_size, len(view)))), view.roles, pad_id).to(device)
        for role, s in sequence_logps(model, batch).items():
            idx = batch.index[role].cpu()
            out[f"{role}.sum"][idx] = s.sum.float().cpu()
            out[f"{role}.n"][idx] = s.n_tokens.float().cpu()
    return out
