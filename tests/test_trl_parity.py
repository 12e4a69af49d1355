"""Our losses against TRL 1.16's own implementations, on the same model, batch and reference log-probs.

TRL computes the policy log-probs itself from the model (with its fused LM head); we compute them with
``prefbench.model.logprobs``, padding-free and in length groups. Agreement to 1e-5 checks the log-prob extraction
and the loss formula together.
"""
import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from prefbench import methods
from prefbench.data.tasks import get_task
from prefbench.data.tokenizer import train_bpe
from prefbench.data.views import View, pad_batch
from prefbench.model.logprobs import sequence_logps
from prefbench.model.packing import packed_attention

ROWS = get_task("reviews").pairs(8, 0)


@pytest.fixture(scope="module")
def tok():
    return train_bpe([r["prompt"] + " " + r["chosen"] for r in ROWS] * 4, 300)


@pytest.fixture()
def model(tok):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, pad_token_id=tok.pad_token_id, tie_word_embeddings=True))


@pytest.fixture(params=["packed", "padded"])
def logps(request):
    """``sequence_logps`` in one of the two layouts the trainer uses."""
    def run(model, batch, statistics=frozenset()):
        with packed_attention(model, enabled=request.param == "packed"):
            return sequence_logps(model, batch, statistics=statistics)
    return run


def conversational(rows, keys=("chosen", "rejected")):
    return Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               **{k: [{"role": "assistant", "content": r[k]}] for k in keys}} for r in rows])


PAIRS = View("paired", [
    {"chosen": ([5, 6, 7], [8, 9, 10, 11]), "rejected": ([5, 6, 7], [12, 13])},
    {"chosen": ([5, 6], [8, 9, 10]), "rejected": ([5, 6], [14, 15, 16, 17, 18])},
    {"chosen": ([20, 21, 22, 23], [30, 31]), "rejected": ([20, 21, 22, 23], [40, 41, 42])},
])
REF_CHOSEN, REF_REJECTED = torch.tensor([-10.0, -12.0, -7.0]), torch.tensor([-11.0, -9.0, -13.0])


@pytest.mark.parametrize("loss_type,name", [("sigmoid", "dpo"), ("ipo", "ipo")])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_and_ipo_match_trl(tok, model, loss_type, name, beta, tmp_path, logps):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), bf16=False, precompute_ref_log_probs=True, loss_type=[loss_type], beta=beta,
                     report_to=[], use_cpu=True, per_device_train_batch_size=4, disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=conversational(ROWS), processing_class=tok)
    batch = pad_batch(PAIRS, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id)
    trl_loss = trainer._compute_loss(trainer.model, {
        "input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "completion_mask": batch.completion_mask,
        "ref_chosen_logps": REF_CHOSEN, "ref_rejected_logps": REF_REJECTED}, return_outputs=False)
    stats = logps(trainer.model, batch)
    policy = methods.BatchLogps(chosen=stats["chosen"], rejected=stats["rejected"])
    reference = methods.BatchLogps(chosen=methods.SeqLogps(REF_CHOSEN, stats["chosen"].n_tokens),
                                   rejected=methods.SeqLogps(REF_REJECTED, stats["rejected"].n_tokens))
    ours = methods.build_method(name, beta=beta).loss(policy, reference).loss
    assert float(ours) == pytest.approx(float(trl_loss), abs=1e-5)


def test_kto_matches_trl(tok, model, tmp_path, logps):
    from trl import KTOConfig, KTOTrainer

    unpaired = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "completion": [{"role": "assistant", "content": r[k]}],
          "label": k == "chosen"} for r in ROWS for k in ("chosen", "rejected")])
    args = KTOConfig(output_dir=str(tmp_path), bf16=False, precompute_ref_log_probs=True, beta=0.2, desirable_weight=1.5,
                     undesirable_weight=0.7, report_to=[], use_cpu=True, per_device_train_batch_size=4,
                     disable_tqdm=True)
    trainer = KTOTrainer(model=model, args=args, train_dataset=unpaired, processing_class=tok)
    # examples: desirable, undesirable, desirable, undesirable; KL partners: a derangement of the completions
    view = View("unpaired", [
        {"chosen": ([5, 6, 7], [8, 9, 10, 11]), "mismatched": ([5, 6, 7], [12, 13])},
        {"rejected": ([5, 6], [12, 13]), "mismatched": ([5, 6], [30, 31])},
        {"chosen": ([20, 21, 22, 23], [30, 31]), "mismatched": ([20, 21, 22, 23], [14, 15, 16])},
        {"rejected": ([9, 9], [14, 15, 16]), "mismatched": ([9, 9], [8, 9, 10, 11])},
    ])
    labels = torch.tensor([True, False, True, False])
    ref = torch.tensor([-10.0, -12.0, -7.0, -9.0])
    ref_kl = torch.tensor([-30.0, -25.0, -29.0, -31.0])
    main = pad_batch(view, [0, 1, 2, 3], ("chosen", "rejected"), tok.pad_token_id)
    kl = pad_batch(view, [0, 1, 2, 3], ("mismatched",), tok.pad_token_id)
    order = torch.cat([main.index["chosen"], main.index["rejected"]])  # our rows: desirable first
    trl_loss = trainer._compute_loss(trainer.model, {
        "input_ids": main.input_ids, "attention_mask": main.attention_mask, "completion_mask": main.completion_mask,
        "label": labels[order], "KL_input_ids": kl.input_ids, "KL_attention_mask": kl.attention_mask,
        "KL_completion_mask": kl.completion_mask, "ref_logps": ref[order], "ref_KL_logps": ref_kl},
        return_outputs=False)
    stats = logps(trainer.model, main) | logps(trainer.model, kl)
    policy = methods.BatchLogps(chosen=stats["chosen"], rejected=stats["rejected"], mismatched=stats["mismatched"])
    reference = methods.BatchLogps(chosen=methods.SeqLogps(ref[main.index["chosen"]], stats["chosen"].n_tokens),
                                   rejected=methods.SeqLogps(ref[main.index["rejected"]], stats["rejected"].n_tokens),
                                   mismatched=methods.SeqLogps(ref_kl, stats["mismatched"].n_tokens))
    ours = methods.build_method("kto", beta=0.2, desirable_weight=1.5, undesirable_weight=0.7).loss(policy, reference)
    assert float(ours.loss) == pytest.approx(float(trl_loss), abs=1e-5)


def test_orpo_odds_ratio_matches_trl(tok, model, tmp_path, logps):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(output_dir=str(tmp_path), bf16=False, beta=0.25, report_to=[], use_cpu=True, max_length=64,
                      disable_tqdm=True)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=conversational(ROWS), processing_class=tok)
    batch = pad_batch(PAIRS, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id)
    stats = logps(trainer.model, batch)
    losses, *_ = trainer.odds_ratio_loss(stats["chosen"].mean, stats["rejected"].mean)
    # TRL's ORPO loss is NLL - mean(beta * log sigma(log_odds)); its NLL also counts prompt tokens, so we
    # compare the odds-ratio term on identical log-probs and the NLL term against transformers below.
    ours = methods.build_method("orpo", lam=0.25).loss(methods.BatchLogps(chosen=stats["chosen"], rejected=stats["rejected"]), None)
    nll = -stats["chosen"].sum.sum() / stats["chosen"].n_tokens.sum()
    assert float(ours.loss) == pytest.approx(float(nll - losses.mean()), abs=1e-5)


def test_sft_matches_transformers_loss(model, tok, logps):
    batch = pad_batch(PAIRS, [0, 1, 2], ("chosen",), tok.pad_token_id)
    labels = batch.input_ids.masked_fill(batch.completion_mask == 0, -100)
    hf_loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
    stats = logps(model, batch)
    ours = methods.build_method("sft").loss(methods.BatchLogps(chosen=stats["chosen"]), None).loss
    assert float(ours) == pytest.approx(float(hf_loss), abs=1e-5)


def test_logprobs_match_full_logits(model, tok, logps):
    """Projecting only completion positions gives the same log-probs as the model's full logits."""
    batch = pad_batch(PAIRS, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    per_token = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    expected = (per_token * batch.completion_mask[:, 1:]).sum(1)
    stats = logps(model, batch)
    got = torch.cat([stats["chosen"].sum, stats["rejected"].sum])
    assert torch.allclose(got, expected, atol=1e-5)
