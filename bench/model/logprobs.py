"""Per-sequence completion log-probs, computed only at the positions that count."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from bench.data.views import PaddedBatch, View, pad_batch
from bench.model.packing import is_packed, packed_attention, packed_inputs, unwrap
from methods import SeqLogps


def _body_and_head(model):
    """The transformer body (hidden states) and the LM head, for models that split that way. None
    for models in a distributed wrapper, whose forward must go through the wrapper."""
    if extract_model_from_parallel(model) is not model:
        return None, None
    inner = unwrap(model)
    head = inner.get_output_embeddings()
    body = getattr(inner, inner.base_model_prefix, None)
    if head is None or body is None or getattr(inner.config, "final_logit_softcapping", None):
        return None, None
    return body, head


def length_groups(lengths: list[int], overhead: int = 64) -> list[list[int]]:
    """Split rows into groups, each padded only to its own longest row, minimising the padded
    positions computed plus ``overhead`` positions per extra forward (dynamic programming over the
    rows sorted by length)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ls = [lengths[i] for i in order]
    best, cut = [0] + [float("inf")] * len(ls), [0] * (len(ls) + 1)
    for i in range(1, len(ls) + 1):
        for j in range(i):
            cost = best[j] + (i - j) * ls[i - 1] + overhead
            if cost < best[i]:
                best[i], cut[i] = cost, j
    groups, i = [], len(ls)
    while i > 0:
        groups.append(order[cut[i]:i])
        i = cut[i]
    return groups[::-1]


def token_logps(model, batch: PaddedBatch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion tokens, flattened, and the batch row of each, under the model's
    distribution at ``temperature``: log_softmax(logits / temperature), the distribution that
    sampling at that temperature draws from (1.0: the model itself, as training uses).

    Inside ``packed_attention`` the rows run as one padding-free row (``bench.model.packing``); otherwise
    in length groups (``length_groups``), so little compute goes to padding. Either way the batch is
    one autograd graph, so losses and gradients are those of the whole batch. Hidden states are
    projected onto the vocabulary only where a completion token is predicted, so no
    (batch, length, vocab) logits tensor is materialised.
    """
    if is_packed(model):
        ids, positions, row, segments = packed_inputs(batch.input_ids, batch.attention_mask)
        completion = batch.completion_mask[batch.attention_mask.bool()]
        target = (completion[1:] == 1) & (row[1:] == row[:-1])  # the next token is in the same sequence
        return (_predict(model, ids, target[None], temperature, position_ids=positions, segments=segments),
                row[1:][target])
    lengths = batch.attention_mask.sum(dim=1).tolist()
    logps, rows = [], []
    for g in length_groups(lengths) if len(lengths) > 1 else [[0]]:
        idx = torch.tensor(g, device=batch.input_ids.device)
        width = max(lengths[i] for i in g)
        target = batch.completion_mask[idx, 1:width].bool()
        logps.append(_predict(model, batch.input_ids[idx, :width], target, temperature,
                              attention_mask=batch.attention_mask[idx, :width]))
        rows.append(idx[target.nonzero()[:, 0]])
    return torch.cat(logps), torch.cat(rows)


def _predict(model, input_ids, target, temperature: float = 1.0, **inputs) -> torch.Tensor:
    """log p_T(input_ids[:, t+1] | input_ids[:, :t+1]) at the positions t where ``target`` is set."""
    body, head = _body_and_head(model)
    if body is not None:
        logits = head(body(input_ids=input_ids, use_cache=False, **inputs)[0][:, :-1][target])
    else:
        logits = model(input_ids=input_ids, use_cache=False, **inputs).logits[:, :-1][target]
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    return -F.cross_entropy(logits, input_ids[:, 1:][target], reduction="none")


def sequence_logps(model, batch: PaddedBatch, temperature: float = 1.0, tokens: bool = False) -> dict[str, SeqLogps]:
    """S(y) and n(y) for every sequence of the batch, split by role (S at ``temperature``, see token_logps);
    with ``tokens``, also each sequence's per-token log-probs (``SeqLogps.tokens``)."""
    logps, rows = token_logps(model, batch, temperature)
    n_rows = batch.input_ids.shape[0]
    sums = torch.zeros(n_rows, device=logps.device, dtype=logps.dtype).index_add(0, rows, logps)
    counts = batch.completion_mask[:, 1:].sum(dim=1)
    per_token = _per_token(logps, rows, counts) if tokens else None
    return {role: SeqLogps(sums[s], counts[s], None if per_token is None else per_token[s, :int(counts[s].max())])
            for role, s in batch.slices.items()}


def _per_token(logps: torch.Tensor, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(rows, max count) right-padded with 0: a row's tokens arrive contiguous and in order (token_logps)."""
    order = torch.sort(rows, stable=True).indices
    sorted_rows = rows[order]
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(rows), device=rows.device) - starts[sorted_rows]
    out = logps.new_zeros(len(counts), int(counts.max()) if len(counts) else 0)
    return out.index_put((sorted_rows, position), logps[order])


@torch.no_grad()
def score_view(model, view: View, pad_id: int, batch_size: int, device,
               temperature: float = 1.0, tokens: bool = False) -> dict[str, torch.Tensor]:
    """``{role}.sum`` and ``{role}.n`` for every example of ``view`` (NaN where an example lacks the role);
    the sums at ``temperature`` (see token_logps). With ``tokens``, also ``{role}.tokens``: (examples, the
    role's longest completion) per-token log-probs, right-padded with NaN."""
    model.eval()
    out = {f"{r}.{k}": torch.full((len(view),), float("nan")) for r in view.roles for k in ("sum", "n")}
    if tokens:
        for r in view.roles:
            width = max((len(ex[r][1]) for ex in view.examples if r in ex), default=0)
            out[f"{r}.tokens"] = torch.full((len(view), width), float("nan"))
    with packed_attention(model):
        for start in range(0, len(view), batch_size):
            batch = pad_batch(view, list(range(start, min(start + batch_size, len(view)))), view.roles, pad_id).to(device)
            for role, s in sequence_logps(model, batch, temperature, tokens).items():
                idx = batch.index[role].cpu()
                out[f"{role}.sum"][idx] = s.sum.float().cpu()
                out[f"{role}.n"][idx] = s.n_tokens.float().cpu()
                if tokens:
                    out[f"{role}.tokens"][idx, :s.tokens.shape[1]] = torch.where(
                        s.mask, s.tokens, float("nan")).float().cpu()
    return out
