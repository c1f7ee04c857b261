"""Kill a prunectl process with SIGKILL at a chosen file event, to test that a re-run resumes.

``kill_env(root, pattern, when, nth)`` gives the environment of a child process whose
interpreter loads the ``sitecustomize`` below: an audit hook that watches writes under ``root``
(``open`` for writing, ``os.rename``/``os.replace`` destinations, ``os.mkdir``).  At the
``nth`` write whose path relative to ``root`` matches ``pattern`` (fnmatch) it SIGKILLs the
process: ``when="before"`` at once (the write never happens: a kill while that file is being
written), ``when="after"`` at the next write of any file (the file exists, nothing later does).
Triggered by files, not by sleeps, so every point is hit the same way on a loaded machine.
Writes outside ``root`` are not counted.  ``record_env(root, log)`` is the counting mode:
nothing is killed, every write under ``root`` is appended to ``log`` (its relative path), so a
sweep can pick its kill points from an uninterrupted run's own writes
(``scripts/kill_sweep.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HOOK = '''
import fnmatch, os, signal, sys
_root = os.environ.get("KILL_ROOT")
if _root:
    _pattern, _when = os.environ.get("KILL_PATTERN", "*"), os.environ.get("KILL_WHEN", "after")
    # opened before the hook is installed: appending to it raises no audit event of its own
    _record = os.environ.get("KILL_RECORD")
    _log = open(_record, "a", buffering=1) if _record else None
    _nth, _seen, _armed = int(os.environ.get("KILL_NTH", "1")), [0], [False]
    _mask = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def _kill_hook(event, args):
        if event == "open":
            path, mode, flags = args
            if not (any(c in mode for c in "wax+") if mode else bool((flags or 0) & _mask)):
                return
        elif event == "os.rename":
            path = args[1]
        elif event == "os.mkdir":
            path = args[0]
        else:
            return
        if _armed[0]:
            os.kill(os.getpid(), signal.SIGKILL)
        if not isinstance(path, (str, os.PathLike)):
            return
        relative = os.path.relpath(os.path.abspath(os.fspath(path)), _root)
        if relative.startswith(".." + os.sep):
            return
        if _log is not None:
            _log.write(relative + "\\n")
        elif fnmatch.fnmatch(relative, _pattern):
            _seen[0] += 1
            if _seen[0] == _nth:
                if _when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
                _armed[0] = True

    sys.addaudithook(_kill_hook)
'''


def kill_env(folder: Path, root: Path, pattern: str, when: str = "after", nth: int = 1) -> dict:
    """Environment for a child that SIGKILLs itself at that file event (``folder`` receives
    the ``sitecustomize.py``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK)
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1",
            "KILL_ROOT": str(Path(root).resolve()), "KILL_PATTERN": pattern, "KILL_WHEN": when,
            "KILL_NTH": str(nth)}


def record_env(folder: Path, root: Path, log: Path) -> dict:
    """Environment for a child that appends each write under ``root`` to ``log`` and is not
    killed (``folder`` receives the ``sitecustomize.py``)."""
    env = kill_env(folder, root, "*")
    return {**env, "KILL_RECORD": str(Path(log).resolve())}


def prunectl(*args, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """The CLI in a child process (``env`` defaults to this one's, one thread)."""
    command = [sys.executable, "-c", "from prunectl.cli import main; main()", *map(str, args)]
    env = env or {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
