"""`prefbench perf`: prefbench's trainer against TRL's on identical inputs, side by side.

For each method, trials alternate prefbench / TRL for ``reps`` repetitions, each in a fresh process
(so peak memory is per trial). Both start from the same random-init Llama, see the same rows in the
same order (no shuffling), with AdamW at a constant learning rate, clipping at 1.0, no warm-up, and
reference log-probs precomputed before training on both sides. Tokens/s is one token count for both
sides, the non-padding tokens of the trained sequences as prefbench tokenizes them (KTO's no-grad KL
sequences excluded), over each side's training wall time; TRL's own count is kept as trl_tokens.

    prefbench perf [methods=[sft,dpo,ipo,kto,orpo]] [steps=20] [reps=3] [batch_size=8] [seq_len=256]
                   [hidden=256] [layers=4] [threads=2] [gradient_checkpointing=true] [data=reviews|hh]
                   [packing=true] [profile=false]
                   [hh_path=../shared/data/hh-rlhf-harmless-base/test.jsonl.gz] [out=results/perf]

data=reviews: the built-in review task, lengthened to 50-256 tokens; data=hh: real HH-RLHF rows, only those
that fit in seq_len untruncated (the two trainers truncate differently, and inputs must be identical).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

DEFAULTS = {"methods": ["sft", "dpo", "ipo", "kto", "orpo"], "steps": 20, "reps": 3, "batch_size": 8,
            "seq_len": 256, "hidden": 256, "layers": 4, "vocab": 2048, "lr": 1e-4, "beta": 0.1, "threads": 2,
            "gradient_checkpointing": True,  # TRL 1.16's default; both sides always use the same setting
            "packing": True,  # prefbench's padding-free forwards (false: length groups), for ablation
            "profile": False,  # torch.profiler tables of each side's training, saved beside the JSON
            "data": "reviews", "hh_path": "../shared/data/hh-rlhf-harmless-base/test.jsonl.gz",
            "out": "results/perf"}
TRL_NAMES = {"sft": "SFTTrainer", "dpo": "DPOTrainer", "ipo": "DPOTrainer(loss_type=ipo)", "kto": "KTOTrainer",
             "orpo": "ORPOTrainer (trl.experimental)"}


class PeakRSS:
    """Peak resident memory above the level at start, sampled every 2 ms (CPU), or CUDA max allocated."""

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self._rss()
            self.running = True
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.mb = (max(self.peak, self._rss()) - self.base) / 2**20


@contextmanager
def profiled(cfg, impl: str, method: str):
    """With profile=true: torch.profiler over the training, its top operators saved to
    out/profile-METHOD-IMPL.txt (timings of profiled trials are inflated; compare them with each other)."""
    if not cfg.profile:
        yield
        return
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.results import write_atomic

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        yield
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=25)
    write_atomic(Path(cfg.out) / f"profile-{method}-{impl}.txt", table)


def _rows(cfg, method: str) -> list[dict]:
    """Conversational rows: the built-in review task lengthened towards seq_len tokens, or HH-RLHF."""
    import random

    from bench.tasks import get_task

    n = cfg.steps * cfg.batch_size
    if cfg.data == "hh":
        from bench.sources import load_rows

        rows, _, _ = load_rows(OmegaConf.create({"source": "file", "path": cfg.hh_path, "format": "hh_rlhf"}))
        return [{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows
                if r["chosen"].strip() and r["rejected"].strip() and r["chosen"] != r["rejected"]][: 8 * n]
    task, rng = get_task("reviews"), random.Random(0)
    rows = []
    for _ in range(2 * n):  # spares for the rows that would need truncating
        p = task.prompt(rng)
        long = lambda: " ".join(task.completion(p, rng) for _ in range(rng.randint(4, 14)))  # noqa: E731
        rows.append({"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": long()}],
                     "rejected": [{"role": "assistant", "content": long()}]})
    return rows


def _setup(cfg, rows):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.tokenizer import train_bpe

    torch.set_num_threads(int(cfg.threads))
    text = lambda msgs: " ".join(m["content"] for m in msgs)  # noqa: E731
    tok = train_bpe([text(r["prompt"]) + " " + text(r["chosen"]) + " " + text(r["rejected"]) for r in rows],
                    int(cfg.vocab))
    need = cfg.steps * cfg.batch_size
    rows[:] = _untruncated(rows, tok, cfg)[:need]
    if len(rows) < need:
        from bench.errors import UserError

        raise UserError(f"perf: only {len(rows)} rows fit in seq_len={cfg.seq_len} untruncated; "
                        f"steps*batch_size={need} are needed (raise seq_len or vocab, or lower steps)")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=int(cfg.hidden), intermediate_size=4 * int(cfg.hidden),
        num_hidden_layers=int(cfg.layers), num_attention_heads=max(1, int(cfg.hidden) // 64),
        num_key_value_heads=max(1, int(cfg.hidden) // 64), max_position_embeddings=int(cfg.seq_len),
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True))
    return tok, model


def _untruncated(rows, tok, cfg) -> list[dict]:
    """The rows that fit in seq_len without truncation (prompt at most half of it)."""
    from bench.data import Renderer

    r = Renderer(tok, int(cfg.seq_len), int(cfg.seq_len) // 2)
    def fits(row):
        p = len(r.ids(r.prompt_text(row["prompt"])))
        return p <= cfg.seq_len // 2 and all(
            p + len(r.ids(r.completion_text(row["prompt"], row[k]))) <= cfg.seq_len for k in ("chosen", "rejected"))
    return [row for row in rows if fits(row)]


def _unpaired(rows):
    """KTO's examples, interleaved desirable/undesirable, identical for both trainers."""
    return [{"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"} for r in rows
            for k in ("chosen", "rejected")]


def run_prefbench(cfg, method: str) -> dict:
    from bench.data import tokenize
    from bench.logprobs import score_view
    from bench.refcache import ReferenceLogps
    from bench.trainer import TrainSpec, train
    from bench.views import build_view
    from methods import build_method

    rows = _rows(cfg, method)
    tok, model = _setup(cfg, rows)
    if method == "kto":
        rows = _unpaired(rows)
    data_cfg = OmegaConf.create({"eval_size": 0, "max_length": cfg.seq_len, "max_prompt_length": cfg.seq_len // 2})
    data = tokenize(rows, tok, data_cfg, 0, "perf", None, shuffle=False)  # the rows' own order, as TRL sees them
    params = {"lam": cfg.beta} if method == "orpo" else {} if method == "sft" else {"beta": cfg.beta}
    m = build_method(method, **params)
    view = build_view(m.view, data.kind, data.train, 0)
    ref = ReferenceLogps(score_view(model, view, tok.pad_token_id, 32, "cpu")) if m.needs_reference else None
    spec = TrainSpec(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_ratio=0.0, scheduler="constant",
                     log_every=1, shuffle=False, progress=False, save_final=False,
                     gradient_checkpointing=bool(cfg.gradient_checkpointing), packing=bool(cfg.packing))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as mem, profiled(cfg, "prefbench", method):
        t0 = time.perf_counter()
        stats = train(model, m, view, spec, Path(tmp), tok.pad_token_id, ref)
        seconds = time.perf_counter() - t0
        losses = [json.loads(line)["loss"] for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return {"tokens": stats["train_tokens"], "seconds": seconds, "peak_mb": mem.mb, "losses": losses}


def run_trl(cfg, method: str) -> dict:
    import tempfile

    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    rows = _rows(cfg, method)
    tok, model = _setup(cfg, rows)
    common = dict(per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr, lr_scheduler_type="constant",
                  warmup_steps=0, max_steps=cfg.steps, logging_steps=1, save_strategy="no", report_to=[],
                  use_cpu=not __import__("torch").cuda.is_available(), disable_tqdm=True, seed=0,
                  max_grad_norm=1.0, weight_decay=0.0, bf16=__import__("torch").cuda.is_available(),
                  gradient_checkpointing=bool(cfg.gradient_checkpointing))
    losses, times = [], {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            times["end"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as tmp:
        if method == "sft":
            from trl import SFTConfig, SFTTrainer as T

            args = SFTConfig(output_dir=tmp, max_length=cfg.seq_len, **common)
            ds = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]
        elif method in ("dpo", "ipo"):
            from trl import DPOConfig, DPOTrainer as T

            args = DPOConfig(output_dir=tmp, max_length=cfg.seq_len, beta=cfg.beta, loss_type=["sigmoid" if method == "dpo" else "ipo"],
                             precompute_ref_log_probs=True, **common)
            ds = rows
        elif method == "kto":
            from trl import KTOConfig, KTOTrainer as T

            args = KTOConfig(output_dir=tmp, max_length=cfg.seq_len, beta=cfg.beta, precompute_ref_log_probs=True,
                             **common)
            ds = _unpaired(rows)
        else:
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer as T

            args = ORPOConfig(output_dir=tmp, max_length=cfg.seq_len, beta=cfg.beta, **common)
            ds = rows

        class Ordered(T):  # the rows' own order, as prefbench sees them
            def _get_train_sampler(self, *a, **k):
                return SequentialSampler(self.train_dataset)

        trainer = Ordered(model=model, args=args, train_dataset=Dataset.from_list(ds), processing_class=tok,
                          callbacks=[Clock()])
        tokens = _trained_tokens(trainer, cfg)
        with PeakRSS() as mem, profiled(cfg, "trl", method):
            trainer.train()
    return {"tokens": tokens, "seconds": times["end"] - times["start"], "peak_mb": mem.mb, "losses": losses}


def _trained_tokens(trainer, cfg) -> int:
    """Non-padding tokens of the sequences the trainer will train on (its own tokenization)."""
    total = 0
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if i >= cfg.steps:
            break
        total += int(batch["attention_mask"].sum()) if "attention_mask" in batch else sum(
            int(batch[k].sum()) for k in batch if k.endswith("attention_mask") and not k.startswith("KL"))
    return total


def trial_main(argv: list[str]) -> int:
    impl, method, cfg = argv[0], argv[1], OmegaConf.create(json.loads(argv[2]))
    out = (run_prefbench if impl == "prefbench" else run_trl)(cfg, method)
    print("PERF_RESULT " + json.dumps(out))
    return 0


def _trial(impl: str, method: str, cfg) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.perf", "--trial", impl, method,
                           json.dumps(OmegaConf.to_container(cfg))], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PERF_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{impl} {method} trial failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("PERF_RESULT "))


def environment(threads: int) -> dict:
    """Where the numbers were measured: device and library versions."""
    import platform

    import torch
    import transformers
    import trl

    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else f"cpu ({threads} threads of {os.cpu_count()} cores)")
    return {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "python": platform.python_version()}


def main(args: list[str]) -> int:
    from bench.results import write_json

    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(args))
    results: dict[str, dict[str, list]] = {}
    for rep in range(int(cfg.reps)):
        for method in cfg.methods:
            for impl in (("prefbench", "trl") if rep % 2 == 0 else ("trl", "prefbench")):
                r = _trial(impl, method, cfg)
                results.setdefault(method, {}).setdefault(impl, []).append(r)
                print(f"  rep {rep} {method:5} {impl:9} {r['seconds']:7.2f} s  "
                      f"{r['peak_mb']:7.1f} MiB  loss {r['losses'][-1]:.4f}", flush=True)
    table = []
    for method, by in results.items():
        row = {"method": method, "trl_trainer": TRL_NAMES[method]}
        tokens = by["prefbench"][0]["tokens"]
        for impl, trials in by.items():
            row[f"{impl}_tokens_per_s"] = statistics.median(tokens / t["seconds"] for t in trials)
            row[f"{impl}_peak_mb"] = statistics.median(t["peak_mb"] for t in trials)
            row[f"{impl}_final_loss"] = trials[0]["losses"][-1]
            row[f"{impl}_tokens"] = trials[0]["tokens"]
        row["speed_ratio"] = row["prefbench_tokens_per_s"] / row["trl_tokens_per_s"]
        row["memory_ratio"] = row["prefbench_peak_mb"] / max(row["trl_peak_mb"], 1e-9)
        table.append(row)
    by_method = {r["method"]: r for r in table}
    if "orpo" in by_method:
        for m in ("dpo", "ipo", "kto"):
            if m in by_method:  # seconds per step relative to ORPO, both prefbench, reference log-probs cached
                per_step = lambda r: r["prefbench_tokens"] / r["prefbench_tokens_per_s"]  # noqa: E731
                by_method[m]["step_cost_vs_orpo"] = per_step(by_method[m]) / per_step(by_method["orpo"])
    header = (f"{'method':6} {'prefbench tok/s':>15} {'TRL tok/s':>10} {'ratio':>6} {'pb MiB':>8} {'TRL MiB':>8} "
              f"{'pb loss':>8} {'TRL loss':>8} {'step/ORPO':>9}")
    print(f"\ndata={cfg.data} steps={cfg.steps} batch={cfg.batch_size} seq_len<={cfg.seq_len} hidden={cfg.hidden} layers={cfg.layers} "
          f"threads={cfg.threads} gradient_checkpointing={cfg.gradient_checkpointing} reps={cfg.reps} (medians)\n{header}")
    for r in table:
        print(f"{r['method']:6} {r['prefbench_tokens_per_s']:15.0f} {r['trl_tokens_per_s']:10.0f} {r['speed_ratio']:6.2f} "
              f"{r['prefbench_peak_mb']:8.1f} {r['trl_peak_mb']:8.1f} {r['prefbench_final_loss']:8.4f} "
              f"{r['trl_final_loss']:8.4f} {r.get('step_cost_vs_orpo', float('nan')):9.2f}")
    path = Path(cfg.out) / f"perf-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(path, {"config": OmegaConf.to_container(cfg), "environment": environment(int(cfg.threads)),
                      "table": table, "trials": results})
    print(f"saved: {path}  (plots: prefbench report {cfg.out})")
    if cfg.profile:
        print(f"profiles (timings above are inflated by the profiler): {cfg.out}/profile-METHOD-IMPL.txt")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--trial"]:
        sys.exit(trial_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
