"""Test hooks that make a failure happen at a known place, for the resume and fault-tolerance tests.

``PREFBENCH_KILL_AT=<point>`` in the environment makes the process send itself SIGKILL (a real
``kill -9``: no cleanup, no finally blocks, no atexit) when it reaches ``kill_point(<point>)``. The
variable is read from the environment, not from the config, so it is no part of a run's identity and
a rerun without it resumes the same run folder. Points:

  stage_build:K  a cached stage of kind K (tokenizer, base, sft) is built but not yet published
  train_step_N   optimizer step N is done (and checkpointed, when N is a checkpoint step); the first
                 training in the process that reaches it, which is a stage's on a cold cache
  evaluate       mid-evaluation: samples generated and scored, judge not yet run
  summary        the job is finished but its summary.json is not yet written
  report         a sweep's report is half written (plots, no index.html)
"""
from __future__ import annotations

import os
import signal

KILL_ENV = "PREFBENCH_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process if ``PREFBENCH_KILL_AT`` names this point."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
