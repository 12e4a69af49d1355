"""An OpenAI-compatible chat server for a local GGUF model, on 127.0.0.1 only: llama.cpp's server from the
llama-cpp-python package (pip install 'prefbench[real]'), started for one judging pass and stopped after it.
The LLM judge (prefbench.eval.llm_judge) talks to it as to any hosted API; nothing leaves the machine."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from prefbench.io.errors import UserError
from prefbench.model.models import model_folder


def gguf_path(spec: str) -> Path:
    """``pkg://package/FILE`` (a file an installed package ships) or a path, checked to exist."""
    if spec.startswith("pkg://"):
        package, _, name = spec.removeprefix("pkg://").partition("/")
        path = Path(model_folder("pkg://" + package)) / name
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"judge.server.model={spec}: no such GGUF file ({path})")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=2) as resp:
            return bool(json.loads(resp.read()).get("data"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def llama_server(model: str, n_ctx: int = 2048, threads: int = 0, start_timeout_s: float = 120.0) -> Iterator[str]:
    """Serve the GGUF file ``model`` (``gguf_path``) on a free port of 127.0.0.1 for the ``with`` block; yields the
    API's base URL (``http://127.0.0.1:PORT/v1``). ``n_ctx``: the context window in tokens (prompt and reply);
    ``threads``: CPU threads (0: llama.cpp's default). The server's output goes to a temporary log, shown in the
    error if it does not come up within ``start_timeout_s``; it is stopped (terminated, then killed) on exit."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise UserError("judge.server needs llama.cpp's server: pip install 'prefbench[real]'")
    path, port = gguf_path(model), _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx)] + (["--n_threads", str(threads)] if threads else [])
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + start_timeout_s
            while not _ready(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read()[-1500:]
                    raise UserError(f"the local judge server ({path.name}) did not start "
                                    f"({'exit code ' + str(proc.returncode) if proc.returncode is not None else 'timed out'}):\n{tail}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
