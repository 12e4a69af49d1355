"""Per-sequence completion log-probs, computed only at the positions that count."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from prefbench.data.views import PaddedBatch, View, pad_batch
from prefbench.io.bars import bar
from prefbench.model.packing import is_packed, packed_attention, packed_inputs, unwrap
from prefbench.methods import SeqLogps
from prefbench.methods.base import STATISTICS


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


@dataclass
class TokenLogps:
    """Log-probs of the predicted tokens, flattened: ``rows`` is each token's batch row, ``completion`` whether
    it is a completion token (else a prompt token), ``vocab`` the (tokens, vocabulary) log-softmax rows."""

    logps: torch.Tensor
    rows: torch.Tensor
    completion: torch.Tensor
    vocab: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def canonical(self) -> TokenLogps:
        """The tokens ordered by row, each row's in sequence order (the layouts differ only in row order)."""
        order = torch.sort(self.rows, stable=True).indices
        return TokenLogps(self.logps[order], self.rows[order], self.completion[order],
                          *(None if t is None else t[order] for t in (self.vocab, self.values)))


def token_logps(model, batch: PaddedBatch, temperature: float = 1.0, prompt: bool = False,
                vocab: bool = False, value_head=None) -> TokenLogps:
    """Log-probs of the completion tokens (and with ``prompt``, of the prompt tokens after the first), under
    the model's distribution at ``temperature``: log_softmax(logits / temperature), the distribution that
    sampling at that temperature draws from (1.0: the model itself, as training uses). ``vocab``: keep the
    whole log-softmax row of each token too. ``value_head``: a module mapping the last hidden state where a
    token is predicted to its value (the state before the token), kept as ``values``.

    Inside ``packed_attention`` the rows run as one padding-free row (``prefbench.model.packing``); otherwise
    in length groups (``length_groups``), so little compute goes to padding. Either way the batch is
    one autograd graph, so losses and gradients are those of the whole batch. Hidden states are
    projected onto the vocabulary only where a counted token is predicted, so no
    (batch, length, vocab) logits tensor is materialised.
    """
    predicted = batch.attention_mask if prompt else batch.completion_mask
    if is_packed(model):
        ids, positions, row, segments = packed_inputs(batch.input_ids, batch.attention_mask)
        real = batch.attention_mask.bool()
        target = (predicted[real][1:] == 1) & (row[1:] == row[:-1])  # the next token is in the same sequence
        logps, full, values = _predict(model, ids, target[None], temperature, vocab, value_head,
                                       position_ids=positions, segments=segments)
        return TokenLogps(logps, row[1:][target], batch.completion_mask[real][1:][target].bool(), full, values)
    lengths = batch.attention_mask.sum(dim=1).tolist()
    parts = []
    for g in length_groups(lengths) if len(lengths) > 1 else [[0]]:
        idx = torch.tensor(g, device=batch.input_ids.device)
        width = max(lengths[i] for i in g)
        target = predicted[idx, 1:width].bool()
        logps, full, values = _predict(model, batch.input_ids[idx, :width], target, temperature, vocab, value_head,
                                       attention_mask=batch.attention_mask[idx, :width])
        parts.append((logps, idx[target.nonzero()[:, 0]], batch.completion_mask[idx, 1:width][target].bool(), full,
                      values))
    logps, rows, completion, full, values = zip(*parts)
    return TokenLogps(torch.cat(logps), torch.cat(rows), torch.cat(completion), torch.cat(full) if vocab else None,
                      torch.cat(values) if value_head is not None else None)


def _predict(model, input_ids, target, temperature: float = 1.0, vocab: bool = False, value_head=None, **inputs
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """log p_T(input_ids[:, t+1] | input_ids[:, :t+1]) at the positions t where ``target`` is set, with
    ``vocab`` the whole log-softmax row there, with ``value_head`` its value of the hidden state there."""
    body, head = _body_and_head(model)
    if body is not None:
        hidden = body(input_ids=input_ids, use_cache=False, **inputs)[0][:, :-1][target]
        logits = head(hidden)
    else:
        out = model(input_ids=input_ids, use_cache=False, output_hidden_states=value_head is not None, **inputs)
        logits = out.logits[:, :-1][target]
        hidden = out.hidden_states[-1][:, :-1][target] if value_head is not None else None
    values = value_head(hidden).squeeze(-1).float() if value_head is not None else None
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    labels = input_ids[:, 1:][target]
    if not vocab:
        return -F.cross_entropy(logits, labels, reduction="none"), None, values
    full = logits.log_softmax(-1)
    return full.gather(1, labels[:, None])[:, 0], full, values


def sequence_logps(model, batch: PaddedBatch, temperature: float = 1.0, statistics: frozenset[str] = frozenset(),
                   reference=None, value_head=None) -> dict[str, SeqLogps]:
    """S(y) and n(y) for every sequence of the batch, split by role (S at ``temperature``, see token_logps),
    plus the ``statistics`` asked for (``prefbench.methods.base.STATISTICS``); ``reference_kl`` runs ``reference``
    (a model) without grad on the same batch; ``values`` applies ``value_head`` to the model's hidden states."""
    unknown = set(statistics) - set(STATISTICS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {', '.join(STATISTICS)}")
    if "values" in statistics and value_head is None:
        raise ValueError("the values statistic needs the trainer's value head")
    t = token_logps(model, batch, temperature, prompt="prompt" in statistics,
                    vocab=bool({"collision", "reference_kl"} & set(statistics)),
                    value_head=value_head if "values" in statistics else None)
    if "reference_kl" in statistics:
        if reference is None:
            raise ValueError("the reference_kl statistic needs the reference model")
        t = t.canonical()
        with torch.no_grad():
            ref = token_logps(reference, batch, temperature, vocab=True).canonical()
    comp = t.completion
    logps, rows = t.logps[comp], t.rows[comp]
    n_rows = batch.input_ids.shape[0]
    sums = logps.new_zeros(n_rows).index_add(0, rows, logps)
    counts = batch.completion_mask[:, 1:].sum(dim=1)
    fields: dict[str, torch.Tensor] = {}
    if "tokens" in statistics:
        fields["tokens"] = _per_token(logps, rows, counts)
    if "prompt" in statistics:
        fields["prompt_sum"] = logps.new_zeros(n_rows).index_add(0, t.rows[~comp], t.logps[~comp])
        fields["prompt_n_tokens"] = batch.attention_mask[:, 1:].sum(dim=1) - counts
    if "collision" in statistics:  # log sum_v p(v)^2 = logsumexp(2 log p)
        fields["token_collision"] = _per_token(torch.logsumexp(2 * t.vocab[comp], -1), rows, counts)
    if "reference_kl" in statistics:  # KL(ref || policy) = sum_v p_ref(v) (log p_ref(v) - log p(v))
        kl = (ref.vocab.exp() * (ref.vocab - t.vocab[comp])).sum(-1)
        fields["token_kl"] = _per_token(kl, rows, counts)
    if "values" in statistics:
        fields["values"] = _per_token(t.values[comp], rows, counts)
    return {role: SeqLogps(sums[s], counts[s], **{k: _rows(v, s, counts) for k, v in fields.items()})
            for role, s in batch.slices.items()}


def _rows(values: torch.Tensor, s: slice, counts: torch.Tensor) -> torch.Tensor:
    """A role's rows of a per-sequence (B,) or per-token (B, T) statistic, per-token ones cut to its longest."""
    return values[s] if values.dim() == 1 else values[s, :int(counts[s].max()) if len(counts[s]) else 0]


def _per_token(logps: torch.Tensor, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(rows, max count) right-padded with 0: a row's tokens arrive contiguous and in order (token_logps)."""
    order = torch.sort(rows, stable=True).indices
    sorted_rows = rows[order]
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(rows), device=rows.device) - starts[sorted_rows]
    out = logps.new_zeros(len(counts), int(counts.max()) if len(counts) else 0)
    return out.index_put((sorted_rows, position), logps[order])


CACHEABLE = ("tokens", "prompt", "collision")  # the statistics of one model, which score_view can store
LOGIT_BYTES = 1 << 28  # float32 logits of one scoring forward, at most (256 MiB): bounds a large vocabulary's pass


def _vocab_size(model) -> int:
    head = unwrap(model).get_output_embeddings()
    return head.weight.shape[0] if head is not None else unwrap(model).config.vocab_size


def _logit_bounded(view: View, rows: list[int], batch_size: int, vocab: int, prompt: bool) -> list[list[int]]:
    """``rows`` in consecutive batches of at most ``batch_size`` examples whose predicted tokens (completions,
    and prompts with ``prompt``) times ``vocab`` stay within ``LOGIT_BYTES`` of float32 logits (a single
    example over it goes alone)."""
    budget = max(1, LOGIT_BYTES // (4 * vocab))
    batches: list[list[int]] = []
    tokens = 0
    for i in rows:
        ex = view.examples[i]
        n = sum(len(ex[r][1]) + prompt * len(ex[r][0]) for r in view.roles if r in ex)
        if not batches or len(batches[-1]) == batch_size or tokens + n > budget:
            batches.append([])
            tokens = 0
        batches[-1].append(i)
        tokens += n
    return batches


@torch.no_grad()
def score_view(model, view: View, pad_id: int, batch_size: int, device,
               temperature: float = 1.0, statistics: frozenset[str] = frozenset(),
               rows: list[int] | None = None, desc: str = "scoring") -> dict[str, torch.Tensor]:
    """``{role}.sum`` and ``{role}.n`` for every example of ``view`` (NaN where an example lacks the role, and
    with ``rows``, for the examples not in it: only those are scored);
    the sums at ``temperature`` (see token_logps). With ``statistics`` (of ``CACHEABLE``), also their
    ``SeqLogps`` fields as ``{role}.{field}``: per-token ones (examples, the role's longest completion),
    right-padded with NaN."""
    statistics = frozenset(statistics) & set(CACHEABLE)
    model.eval()
    out = {f"{r}.{k}": torch.full((len(view),), float("nan")) for r in view.roles for k in ("sum", "n")}
    scalar = ("prompt_sum", "prompt_n_tokens") if "prompt" in statistics else ()
    per_token = ("tokens",) * ("tokens" in statistics) + ("token_collision",) * ("collision" in statistics)
    for r in view.roles:
        width = max((len(ex[r][1]) for ex in view.examples if r in ex), default=0)
        out |= {f"{r}.{k}": torch.full((len(view),), float("nan")) for k in scalar}
        out |= {f"{r}.{k}": torch.full((len(view), width), float("nan")) for k in per_token}
    rows = list(range(len(view))) if rows is None else list(rows)
    with packed_attention(model):
        parts = _logit_bounded(view, rows, batch_size, _vocab_size(model), "prompt" in statistics)
        for part in bar(parts, desc):
            batch = pad_batch(view, part, view.roles, pad_id).to(device)
            for role, s in sequence_logps(model, batch, temperature, statistics).items():
                idx = batch.index[role].cpu()
                out[f"{role}.sum"][idx] = s.sum.float().cpu()
                out[f"{role}.n"][idx] = s.n_tokens.float().cpu()
                for k in scalar:
                    out[f"{role}.{k}"][idx] = getattr(s, k).float().cpu()
                for k in per_token:
                    value = getattr(s, k)
                    out[f"{role}.{k}"][idx, :value.shape[1]] = torch.where(s.mask, value, float("nan")).float().cpu()
    return out
