"""The project directory: pinned recipe, per-step state, fingerprints and the process lock.

A step is up to date when the fingerprint of exactly what it reads (its recipe sections, its input
files, the prunectl version) equals the one recorded after it last finished, and every file it
recorded still exists (DVC's rule).  ``state.json`` is rewritten atomically after every change; a
corrupt or foreign one stops the run with a clear message and is never overwritten.  A lock file
created with ``O_EXCL`` keeps a second process from driving the same project; the lock of a process
that is gone is taken over.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from prunectl import __version__
from prunectl.errors import UserError
from prunectl.digest import SMALL_FILE, damaged, digest, sealed_problems
from prunectl.io import CorruptFileError, read_json, write_json, write_text

STATE_FORMAT = "prunectl-state"
STATE_VERSION = 1
LOCK_NAME = ".prunectl.lock"
STATUSES = ("running", "done", "failed", "skipped")
#: the pipeline's steps, in order: each reads only its recipe sections and earlier steps' files
STEPS: tuple[str, ...] = ("calibrate", "score", "search", "apply", "recover", "eval", "export")
#: first directory of a project file -> the step that writes it (for "run X first" hints)
PRODUCERS = {
    "calibration": "calibrate", "scores": "score", "search": "search", "pruned": "apply",
    "recovered": "recover", "eval": "eval", "export": "export",
}
PACKAGES = ("torch", "transformers", "lm_eval", "peft", "accelerate", "datasets", "safetensors")


#: header line of a pinned recipe: the sha256 of the YAML after the header
PIN_DIGEST = "# sha256 of the lines below: "


def _sha256(text: str) -> str:
    return digest(text.encode("utf-8"))


def _check_pin_digest(file: Path, text: str) -> None:
    """A pinned recipe cut or edited after pinning can still parse as another valid recipe:
    its recorded digest must match.  A file without the line (pinned by an older prunectl)
    is read as it is."""
    head, marker, rest = text.partition(PIN_DIGEST)
    if not marker:
        return
    recorded, _, body = rest.partition("\n")
    if _sha256(body) != recorded.strip():
        raise UserError(
            f"{file} (the pinned recipe) changed after it was pinned (truncated or edited: its "
            "sha256 differs from the one in its header); restore it, or move it away and "
            "pass -r/--recipe"
        )


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment() -> dict[str, Any]:
    """What produced a result: Python, library versions, platform and accelerators."""
    import torch

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "prunectl": __version__,
        "packages": versions,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda else [],
    }


def _process_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    """Whether ``pid`` is a running process (not a zombie, not a later process reusing the pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True  # no /proc: the kill test is all we have
    if state == "Z":
        return False
    return not start or _process_start(pid) in (None, start)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


class Project:
    """One experiment's directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._verified: set[tuple] = set()

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # --- lock -----------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[str | None]:
        """Hold the project for this process; yields a note when a stale lock was taken over.

        Re-entrant: a process that already holds the lock may take it again.
        """
        owned, note = self._acquire()
        try:
            yield note
        finally:
            if owned:
                self._release(owned)

    def _lock_text(self) -> str:
        me = os.getpid()
        return f"{me}\n{socket.gethostname()}\n{now()}\n{_process_start(me) or ''}\n"

    def _acquire(self) -> tuple[str | None, str | None]:
        lock_file = self.path(LOCK_NAME)
        note = None
        for _ in range(8):
            text = self._lock_text()
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._holder(lock_file)
                if held is None:
                    continue  # vanished or being written; look again
                pid, host, started, start_ticks, _ = held
                if pid == 0 and _age(lock_file) < 1:
                    time.sleep(0.25)  # probably being written this instant
                    continue
                if host == socket.gethostname() and pid == os.getpid():
                    return None, None  # this process holds it already
                if host != socket.gethostname() or _alive(pid, start_ticks):
                    on_host = "" if host == socket.gethostname() else f" on host {host}"
                    raise UserError(
                        f"project {self.root} is locked by process {pid}{on_host} (started "
                        f"{started}); wait for it or remove {lock_file} if that process is gone"
                    )
                if self._holder(lock_file) == held:  # nobody took it over in the meantime
                    lock_file.unlink(missing_ok=True)
                note = f"recovered the stale lock of process {pid} (started {started}): it is gone"
                continue
            except PermissionError as error:
                raise UserError(
                    f"cannot write in project directory {self.root} ({error.strerror}); fix its "
                    "permissions or choose another -p/--project"
                ) from None
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            self._remove_orphans()
            return text, note
        raise UserError(f"could not lock project {self.root}; remove {lock_file} and retry")

    @staticmethod
    def _holder(lock_file: Path) -> tuple[int, str, str, str | None, str] | None:
        """``(pid, host, started, process start, text)`` from a lock file; ``None`` if it is gone.
        A lock file without a pid (a writer killed at once) belongs to nobody: pid 0."""
        try:
            text = lock_file.read_text()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise UserError(f"{lock_file} is a directory, not prunectl's lock file; remove it "
                            "(nothing of the project is in it) and retry") from None
        except UnicodeDecodeError:
            text = "\0"
        lines = text.splitlines() + ["", "", "", ""]
        if text.strip() and not lines[0].strip().isdigit():
            raise UserError(f"{lock_file} is not a prunectl lock file (its first line is no "
                            "process id); if no prunectl command is running on this project, "
                            "remove it")
        pid = int(lines[0]) if lines[0].strip().isdigit() else 0
        host = lines[1].strip() or socket.gethostname()
        return pid, host, lines[2].strip(), lines[3].strip() or None, text

    def _remove_orphans(self) -> None:
        """Remove what killed writes left behind: ``.NAME.*.tmp`` files of ``io.atomic_path``
        and ``NAME.tmp-*`` / ``NAME.old-*`` directories of ``save_model``.  Called with the lock
        just taken, so no other prunectl process is writing them."""
        for path in list(self.root.rglob("*")):
            name = path.name
            if path.is_file() and name.startswith(".") and name.endswith(".tmp"):
                path.unlink(missing_ok=True)
            elif path.is_dir() and (".tmp-" in name or ".old-" in name):
                shutil.rmtree(path, ignore_errors=True)

    def _release(self, text: str) -> None:
        lock_file = self.path(LOCK_NAME)
        try:
            if lock_file.read_text() == text:
                lock_file.unlink()
        except FileNotFoundError:
            pass

    # --- state ------------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.path("state.json")

    @property
    def state(self) -> dict[str, Any]:
        """The validated ``state.json`` (an empty state when the project has none yet)."""
        return self._load_state() or self._new_state()

    def _load_state(self) -> dict[str, Any] | None:
        file = self.state_file
        if not file.exists():
            return None
        try:
            state = read_json(file)
        except (CorruptFileError, UnicodeDecodeError):
            raise UserError(
                f"{file} is corrupt (not JSON); restore it, or move it away to start the project "
                "afresh (it was left untouched)"
            ) from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError(
                f"{file} is not a prunectl state file (no \"format\": \"{STATE_FORMAT}\"); "
                "use another project directory (-p) or move that file away"
            )
        if state.get("version") != STATE_VERSION or not isinstance(state.get("steps"), dict):
            raise UserError(
                f"{file} has state version {state.get('version')!r}, this prunectl reads "
                f"version {STATE_VERSION}; use a matching prunectl or a new project directory"
            )
        bad = [name for name, record in state["steps"].items()
               if not isinstance(record, dict) or record.get("status") not in STATUSES]
        if bad:
            raise UserError(
                f"{file}: the record of step '{bad[0]}' is damaged (status must be one of "
                f"{', '.join(STATUSES)}); fix it, or remove that step's entry to re-run it"
            )
        return state

    def _new_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "created": now(),
            "prunectl_version": __version__,
            "environment": environment(),
            "steps": {},
        }

    def _update(self, step: str, replace: bool = False, **fields: Any) -> None:
        state = self.state
        record = {} if replace else state["steps"].get(step, {})
        state["steps"][step] = {**record, **fields}
        write_json(self.state_file, state)

    def record(self, step: str) -> dict[str, Any] | None:
        return self.state["steps"].get(step)

    def _relative(self, path: Path | str) -> str:
        path = Path(path)
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def fingerprint(self, step: str, sections: dict[str, Any], inputs: list[Path]) -> str:
        """Hash of what ``step`` reads: recipe sections, input files and the prunectl version."""
        digests = {}
        for item in inputs:
            if not Path(item).exists():
                relative = self._relative(item)
                producer = PRODUCERS.get(relative.split("/")[0])
                hint = f"run `prunectl {producer} -p {self.root}` first" if producer else \
                    "create it or fix the recipe"
                raise UserError(f"step '{step}' needs {item}, which does not exist; {hint}")
            digests[self._relative(item)] = digest(Path(item))
        return digest({"step": step, "prunectl": __version__, "sections": sections,
                       "inputs": digests})

    def is_up_to_date(self, step: str, fingerprint: str) -> bool:
        """Whether ``step`` finished with this fingerprint and all it wrote is still there (a
        deleted output re-runs the step).  Raises ``UserError`` when an output is there but not
        as the step wrote it: see :meth:`verify_outputs`."""
        record = self.record(step)
        current = (
            record is not None
            and record.get("status") == "done"
            and record.get("fingerprint") == fingerprint
            and all((self.root / output).exists() for output in record.get("outputs", []))
            and all((self.root / file).is_file() for file in record.get("files", {}))
        )
        if current:
            self.verify_outputs(step)
        return current

    def _file_records(self, outputs: list[Path]) -> dict[str, dict[str, Any]]:
        """Size, modification time and sha256 of every file among ``outputs`` (directories
        walked), as :meth:`finish` records them."""
        files: dict[str, dict[str, Any]] = {}
        for output in map(Path, outputs):
            for file in sorted(output.rglob("*")) if output.is_dir() else [output]:
                if file.is_file():
                    stat = file.stat()
                    files[self._relative(file)] = {
                        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                        "sha256": digest(file),
                    }
        return files

    # --- verified state: outputs checked against their recorded digests ----------------------
    def _problems(self, step: str, full: bool = False) -> Iterator[tuple[Path, int, str]]:
        """``(file, recorded size, what is wrong)`` for each recorded file of ``step`` that is
        missing or not as the step wrote it.  A file is hashed when it is small, when ``full``
        asks for it, or when its modification time moved; a large untouched one costs a stat."""
        for relative, seen in (self.record(step) or {}).get("files", {}).items():
            file = self.root / relative
            try:
                stat = file.stat()
            except FileNotFoundError:
                yield file, seen["size"], "missing"
                continue
            if stat.st_size != seen["size"]:
                yield file, seen["size"], f"size {stat.st_size} bytes, recorded {seen['size']}"
                continue
            untouched = stat.st_mtime_ns == seen["mtime_ns"]
            if untouched and not full and stat.st_size > SMALL_FILE:
                continue
            if digest(file) != seen["sha256"]:
                yield file, seen["size"], "content changed"

    def verify_outputs(self, step: str, full: bool = False) -> None:
        """Refuse to trust ``step`` when a file it wrote has changed since (truncated, edited,
        zero-filled, bit-flipped): one line naming the file, the step and the two ways on."""
        key = (step, full, json.dumps((self.record(step) or {}).get("files", {}), sort_keys=True))
        if key in self._verified:
            return  # checked already by this process, against the same record
        for file, recorded, problem in self._problems(step, full):
            if problem == "missing":
                raise UserError(f"{file}, written by step '{step}', is missing; re-run it with "
                                f"`prunectl {step} -p {self.root} --force`")
            raise damaged(file, file.stat().st_size, recorded,
                          f"re-run step '{step}' with `prunectl {step} -p {self.root} --force` "
                          f"to rewrite it, or delete {file} and `prunectl {step}` (or `run`) "
                          "makes it again")
        self._verified.add(key)

    def output_digest(self, step: str, under: str | None = None) -> str:
        """The content of what ``step`` wrote (its files under ``under``, a path relative to the
        project, or all of them), verified first: what a later step records as its input, so it
        goes stale when the earlier step re-made its output with other bytes."""
        record = self.record(step) or {}
        self.verify_outputs(step)
        files = {name: seen["sha256"] for name, seen in record.get("files", {}).items()
                 if under is None or name == under or name.startswith(under.rstrip("/") + "/")}
        return digest(files) if files else record.get("fingerprint", "")

    def damage(self, full: bool = False) -> dict[str, list[str]]:
        """For ``status``: each finished step's missing or damaged files, as ``file (problem)``."""
        found: dict[str, list[str]] = {}
        for step, record in self.state["steps"].items():
            if record.get("status") == "done":
                problems = [f"{self._relative(f)} ({p})" for f, _, p in self._problems(step, full)]
                if problems:
                    found[step] = problems
        for file, problem in sealed_problems(self.root, full):  # caches, checkpoints, results
            relative = self._relative(file)
            entry = f"{relative} ({problem})"
            step = PRODUCERS.get(relative.split("/")[0], "run")
            if entry not in found.get(step, []):
                found.setdefault(step, []).append(entry)
        return found

    def start(self, step: str, fingerprint: str) -> None:
        self._update(
            step, replace=True, status="running", fingerprint=fingerprint, started=now(),
            finished=None, duration_s=None, outputs=[], files={}, summary={}, error=None,
            environment=environment(),
        )

    def finish(
        self, step: str, fingerprint: str, outputs: list[Path], summary: dict[str, Any],
        duration_s: float,
    ) -> None:
        self._update(
            step, status="done", fingerprint=fingerprint, finished=now(),
            duration_s=round(float(duration_s), 3),
            outputs=[self._relative(p) for p in outputs], files=self._file_records(outputs),
            summary=summary, error=None,
        )

    def fail(self, step: str, error: str) -> None:
        self._update(step, status="failed", finished=now(), error=error)

    def mark_skipped(self, step: str, reason: str) -> None:
        record = self.record(step) or {}
        if record.get("status") == "skipped" and record.get("summary") == {"reason": reason}:
            return  # recorded already: a re-run leaves state.json as it is
        self._update(
            step, replace=True, status="skipped", fingerprint=None, started=None, finished=now(),
            duration_s=None, outputs=[], summary={"reason": reason}, error=None,
        )

    # --- pinned recipe ----------------------------------------------------------------------------
    def pinned_recipe(self) -> dict[str, Any] | None:
        file = self.path("recipe.yaml")
        if not file.exists():
            return None
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(
                f"{file} (the pinned recipe) is not text; restore it, or move it away and pass "
                "-r/--recipe"
            ) from None
        _check_pin_digest(file, text)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise UserError(
                f"{file} (the pinned recipe) is malformed YAML{where}; fix it, or move it away "
                "and pass -r/--recipe"
            ) from None
        if not isinstance(data, dict):
            raise UserError(
                f"{file} (the pinned recipe) is not a mapping of sections; fix it, or move it "
                "away and pass -r/--recipe"
            )
        return data

    def pin_recipe(self, resolved: dict[str, Any]) -> list[str]:
        """Pin the resolved recipe; returns the top-level sections that differ from the pinned one
        (empty at first pin and when nothing changed).  The replaced copy is kept as
        ``recipe.previous.yaml``."""
        file = self.path("recipe.yaml")
        old = self.pinned_recipe()
        if old == resolved:
            return []
        body = yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)
        header = (
            f"# Resolved recipe pinned by prunectl {__version__} on {now()}: the recipe file with\n"
            "# its extends and --set overrides applied, defaults filled in.  Commands without\n"
            "# -r/--recipe use it; -r or --set replace it (the old one: recipe.previous.yaml).\n"
            f"{PIN_DIGEST}{_sha256(body)}\n"
        )
        if old is not None:
            write_text(self.path("recipe.previous.yaml"), file.read_text(encoding="utf-8"))
        write_text(file, header + body)
        if old is None:
            return []
        return [k for k in dict.fromkeys([*resolved, *old]) if old.get(k) != resolved.get(k)]
