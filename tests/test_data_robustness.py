"""Bad data is counted, never a traceback, through the whole run path; unreadable files stop with one
line before any stage is built; the corpus is bounded and holds training rows only."""
import gzip
import json
import time
from collections import Counter

import pytest
from omegaconf import OmegaConf

from prefbench.data.sources import corpus_rows, load_rows
from prefbench.data.tokenizer import train_bpe
from prefbench.io.errors import UserError
from tests.conftest import REPO, prefbench

# A `task=file` job at the SMOKE scale (tests/conftest.py), judged by the suite's own reward model.
FILE_SMOKE = ["model=tiny-xs", "task.eval_size=8", "task.max_length=64", "task.max_prompt_length=32",
              "task.max_new_tokens=8", "task.vocab_size=300", "judge=bt", "judge.train.steps=3",
              "judge.train.batch_size=4", "stages.base.steps=15", "stages.sft.steps=6", "trainer.steps=4",
              "trainer.log_every=2", "trainer.checkpoint_every=2", "trainer.progress=false",
              "eval.samples_per_prompt=2", "eval.diversity=false", "eval.bootstrap=50"]


def good(i: int) -> dict:
    return {"prompt": f"question number {i}", "chosen": f"a good answer {i}.", "rejected": f"a bad answer {i}."}


def fuzz_lines() -> tuple[list[bytes], dict[str, int], int]:
    """60 good rows and the defects found in review: (lines, expected drops by reason, expected kept rows)."""
    dump = lambda r: json.dumps(r).encode()  # noqa: E731  (ASCII JSON: escapes stay escapes)
    defects = {
        "missing_field": [dump({"prompt": "x", "chosen": "y"}), dump({"prompt": "x", "chosen": None, "rejected": "z"})],
        "empty_completion": [dump({"prompt": "x", "chosen": "", "rejected": "z"})],
        "empty_prompt": [dump({"prompt": "", "chosen": "y", "rejected": "z"})],
        "chosen_equals_rejected": [dump({"prompt": "x", "chosen": "same", "rejected": "same"})],
        "wrong_type": [dump({"prompt": "x", "chosen": 5, "rejected": "z"}),
                       dump({"prompt": True, "chosen": "y", "rejected": "z"}),
                       dump({"prompt": ["x"], "chosen": "y", "rejected": "z"}),
                       dump({"prompt": "x", "chosen": 1.5, "rejected": "z"}),
                       dump({"prompt": "x", "chosen": {"a": 1}, "rejected": "z"})],
        "too_long": [dump({"prompt": "long", "chosen": "word " * 400, "rejected": "short"})],
        "unparseable_line": [b'{"prompt": "broken', b"not json at all",
                             b'{"prompt": "raw \x01 control", "chosen": "y", "rejected": "z"}'],
        "not_a_record": [b"[1, 2, 3]", b'"just a string"', b"42"],
        "duplicate": [dump(good(3)), dump(good(7))],
        "invalid_unicode": [b'{"prompt": "lone \\ud800 surrogate", "chosen": "y", "rejected": "z"}'],
        "invalid_utf8": [b'{"prompt": "bad \xff\xfe bytes", "chosen": "y", "rejected": "z"}'],
        "prompt_only": [dump({"prompt": "only a prompt"})],
        "over_max_chars": [dump({"prompt": "huge", "chosen": "abcdefghij" * 500_000, "rejected": "b"})],  # 5 MB
    }
    kept = [dump(good(i)) for i in range(60)]
    kept[0] = b"\xef\xbb\xbf" + kept[0]  # a UTF-8 byte-order mark must not cost the first row
    kept[5] += b"\r"  # CRLF line endings
    kept[9] += b"\r"
    kept.append(dump({"prompt": "escaped \u0001 control \u001b[31m chars", "chosen": "fine", "rejected": "also fine"}))
    rest = [line for lines in defects.values() for line in lines] + [b"", b"   "]  # blank lines are not rows
    lines = kept[:1] + [x for pair in zip(kept[1:], rest + [None] * len(kept)) for x in pair if x is not None]
    return lines, {k: len(v) for k, v in defects.items()}, len(kept)


def test_fuzz_file_runs_end_to_end_with_every_row_counted(tmp_path):
    lines, drops, kept = fuzz_lines()
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    t0 = time.perf_counter()
    proc = prefbench("run", "task=file", f"task.path={path}", "task.drop_overlong=true", "method=dpo",
                     f"results_dir={tmp_path}", *FILE_SMOKE, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr
    s = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert s["status"] == "done", s["error"]
    found = {k.removeprefix("data/drop/"): v for k, v in s.items() if k.startswith("data/drop/")}
    assert found == drops
    assert s["data/rows_kept"] == kept and s["data/rows_in"] == kept + sum(drops.values())
    assert s["data/rows_in"] == s["data/rows_kept"] + sum(found.values())
    assert s["data/rows_in"] == sum(1 for line in lines if line.strip())
    assert time.perf_counter() - t0 < 120


def test_corpus_is_bounded_per_row_and_in_total():
    huge = {"prompt": [{"role": "user", "content": "p" * 50_000}],
            "chosen": [{"role": "assistant", "content": "abcdefghij" * 500_000}],
            "rejected": [{"role": "assistant", "content": "short"}]}
    rows = [huge] + [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "c"}],
                      "rejected": [{"role": "assistant", "content": "r"}]} for i in range(10)]
    cfg = OmegaConf.create({"source": "file", "corpus_row_chars": 4000, "corpus_chars": 8010})
    corpus = corpus_rows(cfg, rows)
    n = lambda v: len(v) if isinstance(v, str) else sum(len(m["content"]) for m in v)  # noqa: E731
    sizes = [n(r["prompt"]) + n(r["completion"]) for r in corpus]
    assert max(sizes) <= 4000 and sum(sizes) <= 8010 and len(corpus) == 5
    first = corpus[0]  # the prompt keeps its end, the completion its start
    assert first["prompt"][-1]["content"].endswith("p") and first["completion"][0]["content"].startswith("abcdefghij")
    defaults = OmegaConf.create({"source": "file"})
    t0 = time.perf_counter()
    train_bpe([m["content"] for r in corpus_rows(defaults, rows) for m in r["prompt"] + r["completion"]], 300)
    assert time.perf_counter() - t0 < 10  # uncapped, this one row trains for many minutes


BAD_FILES = {
    "empty.jsonl": (lambda p: p.write_text(""), "the file is empty"),
    "blank.jsonl": (lambda p: p.write_text("\n  \n\r\n"), "holds only blank lines"),
    "folder": (lambda p: p.mkdir(), "is a directory"),
    "x.jsonl": (lambda p: p.mkdir(), "is a directory"),
    "truncated.jsonl.gz": (lambda p: p.write_bytes(gzip.compress(b'{"prompt": "a", "chosen": "b"}\n' * 500)[:60]),
                           "cannot be read: EOFError"),
    "plain.jsonl.gz": (lambda p: p.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'),
                       "cannot be read: BadGzipFile"),
    "missing.jsonl": (lambda p: None, "no such file"),
    "all_bad.jsonl": (lambda p: p.write_text('{"prompt": "a", "chosen": "b", "rejected": "b"}\n' * 3 + "{oops\n"),
                      "no valid rows (chosen_equals_rejected: 3, unparseable_line: 1)"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_unreadable_file_is_one_line_before_any_stage(tmp_path, name):
    make, reason = BAD_FILES[name]
    path = tmp_path / name
    make(path)
    proc = prefbench("run", "task=file", f"task.path={path}", f"results_dir={tmp_path}",
                     f"cache_dir={tmp_path / 'cache'}", *FILE_SMOKE, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("prefbench: error:")]
    assert errors and str(path) in errors[-1] and reason in errors[-1], proc.stderr
    assert not (tmp_path / "cache" / "stages").exists()  # refused before a tokenizer or model stage


def test_gold_judge_on_a_dataset_is_refused_before_any_stage(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(good(i)) + "\n" for i in range(40)))
    t0 = time.perf_counter()
    proc = prefbench("run", "task=file", f"task.path={path}", f"results_dir={tmp_path}",
                     f"cache_dir={tmp_path / 'cache'}", *[a for a in FILE_SMOKE if not a.startswith("judge")],
                     "judge=gold", check=False)
    assert proc.returncode == 2 and "judge=gold needs a built-in task" in proc.stderr, proc.stderr
    assert not (tmp_path / "cache" / "stages").exists()
    assert time.perf_counter() - t0 < 60


def test_hh_rlhf_local_reads_the_environment_variable_else_a_path_from_the_current_directory(tmp_path, monkeypatch):
    from prefbench.job.config import compose_config

    hh = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base" / "test.jsonl.gz"
    if not hh.exists():
        pytest.skip(f"the HH-RLHF sample is not at {hh}")
    monkeypatch.delenv("PREFBENCH_HH_PATH", raising=False)
    monkeypatch.chdir(REPO)  # a clone, run from its root: ../shared/data
    rows, _, counts = load_rows(compose_config(["task=hh_rlhf_local"]).task)
    assert len(rows) + sum(counts.values()) == 2312
    monkeypatch.chdir(tmp_path)  # anywhere else: the environment variable, or a clear error
    with pytest.raises(UserError, match=r"no such file \(relative paths are taken from the current directory"):
        load_rows(compose_config(["task=hh_rlhf_local"]).task)
    monkeypatch.setenv("PREFBENCH_HH_PATH", str(hh))
    rows, _, counts = load_rows(compose_config(["task=hh_rlhf_local"]).task)
    assert len(rows) + sum(counts.values()) == 2312


def test_unreadable_bytes_are_counted_by_their_own_reasons(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(good(0)).encode() + b"\r\n" + b'{"prompt": "\xc3\x28"}\n'
                     + json.dumps(good(1)).encode() + b"\n")
    rows, _, counts = load_rows(OmegaConf.create({"source": "file", "path": str(path), "format": "trl"}))
    assert rows == [good(0), good(1)] and counts == Counter({"drop/invalid_utf8": 1})


def test_a_missing_gzip_stream_names_the_file(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(UserError, match=r"rows.jsonl.gz: cannot be read"):
        load_rows(OmegaConf.create({"source": "file", "path": str(path), "format": "trl"}))

