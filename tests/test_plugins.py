"""Tasks and judges are plugins like methods: a package's entry points (``prefbench.tasks``,
``prefbench.judges``) plus its yaml folder on Hydra's search path, and nothing in prefbench changes. The worked
example of the README: a built-in-style task with a gold reward in one file, and a judge, trained and judged
end to end by the real `prefbench run`."""
import json

from tests.conftest import SMOKE, install_package, prefbench, run_dir

PLUGIN = '''
"""A task with a gold reward and a judge, as a third-party package."""
from prefbench.data.tasks.base import SyntheticTask

LETTERS = "abcdefgh"


class Repeat(SyntheticTask):
    """Repeat the prompt's letters. Gold reward: the fraction of positions right, minus 0.5 per letter too many
    or too few."""
    name = "repeat"
    max_new_tokens = 16

    def prompt(self, rng):
        return "repeat: " + " ".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6)))

    def completion(self, prompt, rng):
        out = [c if rng.random() < 0.7 else rng.choice(LETTERS) for c in prompt.split(": ", 1)[1].split()]
        return " ".join(out + ([rng.choice(LETTERS)] if rng.random() < 0.3 else []))

    def reward(self, prompt, completion):
        want, got = prompt.split(": ", 1)[1].split(), completion.split()
        return sum(a == b for a, b in zip(want, got)) / len(want) - 0.5 * abs(len(got) - len(want))


class Brevity:
    """A proxy judge: shorter is better."""

    def score(self, prompts, completions):
        return [-float(len(c.split())) for c in completions]


def brevity(cfg, group):
    return Brevity()
'''

TASK_YAML = """name: repeat
source: builtin
builtin: repeat
n_pairs: 600
corpus_size: 1000
annotator: {temperature: 0.0}
eval_size: 32
val_size: 32
max_length: 64
max_prompt_length: 32
max_new_tokens: 16
chat_template: true
vocab_size: 200
"""


def test_a_task_and_a_judge_from_another_package_train_and_judge_end_to_end(tmp_path, shared_cache):
    env = install_package(tmp_path, "mytask", PLUGIN, "[prefbench.tasks]\nrepeat = mytask:Repeat\n\n"
                                                      "[prefbench.judges]\nbrevity = mytask:brevity\n")
    conf = tmp_path / "conf"
    (conf / "task").mkdir(parents=True)
    (conf / "judge").mkdir()
    (conf / "task" / "repeat.yaml").write_text(TASK_YAML)
    (conf / "judge" / "brevity.yaml").write_text("name: brevity\n")
    common = [f"hydra.searchpath=[file://{conf}]", f"results_dir={tmp_path}", f"cache_dir={shared_cache}", *SMOKE,
              "task.n_pairs=600", "task.corpus_size=1000"]
    prefbench("run", "task=repeat", "judge=brevity", "method=dpo", *common, env=env)
    summary = json.loads((run_dir(tmp_path / "runs", "repeat-tiny-xs-dpo-s0") / "summary.json").read_text())
    assert summary["status"] == "done" and summary["task"] == "repeat" and summary["eval/judge"] == "brevity"
    assert summary["eval/gold_score_mean"] is not None  # the plugin task's gold reward beside the proxy judge
    samples = [json.loads(line) for line in (run_dir(tmp_path / "runs", "repeat-tiny-xs-dpo-s0") / "samples.jsonl")
               .read_text().splitlines()]
    assert all(s["score"] == -len(s["response"].split()) for s in samples)  # scored by the plugin judge
    unknown = prefbench("run", "task=repeat", "judge=nope", *common, env=env, check=False)
    assert unknown.returncode == 2 and "judge='nope' is unknown" in unknown.stderr
