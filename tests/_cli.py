"""Shared helpers for tests that run the ``tfp-nice`` command (in a subprocess or in-process)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

from tfp_nice import cli

#: A tiny vector model: seconds per run.
TINY = ["--epochs", "2", "--hidden-units", "16", "--num-couplings", "2", "--batch-size", "256"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def run_cli(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Runs ``tfp-nice ARGS`` in a fresh process (as a user would); returns the result."""
    return subprocess.run([sys.executable, "-m", "tfp_nice.cli", *map(str, args)],
                          capture_output=True, text=True, env=dict(ENV, **(env or {})),
                          cwd=cwd, timeout=timeout)


def exit_code(argv) -> int:
    """``cli.main``'s return value, or the code of argparse's SystemExit for usage errors."""
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def digest(directory, skip=("run.lock",)) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``directory`` but those named in ``skip``
    (by default ``run.lock``, a lock file whose content is the pid of the last process that
    held it)."""
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            if f in skip:
                continue
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, directory)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def console_script(name: str) -> str:
    """The path of an installed console script: next to ``sys.executable`` first (a virtual
    environment that is not activated), then on ``PATH``."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(beside):
        return beside
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"console script {name!r} is not installed")
    return found


def error_line(stderr: str) -> str:
    """The single line of ``stderr`` (asserting that there is exactly one)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    return lines[0]
