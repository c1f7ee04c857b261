"""Project state: records, fingerprints, corrupt state files, the pinned recipe and the lock."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys

import pytest
import yaml

from prunectl import __version__
from prunectl.errors import UserError
from prunectl.project.state import Project


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path / "proj")


def test_step_records_round_trip_through_state_json(project):
    out = project.path("scores", "scores.safetensors")
    out.parent.mkdir(parents=True)
    out.write_bytes(b"x")
    project.start("score", "fp1")
    assert project.record("score")["status"] == "running"
    project.finish("score", "fp1", [out], {"perplexity": 12.5}, 1.23456)
    state = json.loads(project.path("state.json").read_text())
    assert state["format"] == "prunectl-state" and state["version"] == 1
    assert state["prunectl_version"] == __version__
    assert state["environment"]["python"] and "torch" in state["environment"]["packages"]
    record = state["steps"]["score"]
    assert record["status"] == "done" and record["fingerprint"] == "fp1"
    assert record["outputs"] == ["scores/scores.safetensors"]
    assert record["summary"] == {"perplexity": 12.5} and record["duration_s"] == 1.235
    assert record["started"] <= record["finished"] and record["error"] is None
    assert project.is_up_to_date("score", "fp1")
    assert not project.is_up_to_date("score", "fp2")
    assert not project.is_up_to_date("search", "fp1")
    out.unlink()  # a recorded output is gone: the step must run again
    assert not project.is_up_to_date("score", "fp1")
    assert Project(project.root).state["steps"] == {"score": record}


def test_fail_and_skip_are_recorded_and_never_up_to_date(project):
    project.start("search", "fp")
    project.fail("search", "KeyboardInterrupt: ")
    record = project.record("search")
    assert record["status"] == "failed" and record["error"] == "KeyboardInterrupt: "
    assert not project.is_up_to_date("search", "fp")
    project.mark_skipped("recover", "the recipe has no recover section")
    assert project.record("recover")["status"] == "skipped"
    assert project.record("recover")["summary"] == {"reason": "the recipe has no recover section"}
    assert list(project.state["steps"]) == ["search", "recover"]  # the order steps first ran


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "is corrupt (not JSON)"),
    ('{"hello": "world"}', "is not a prunectl state file"),
    ("[1, 2]", "is not a prunectl state file"),
    ('{"format": "prunectl-state", "version": 99, "steps": {}}', "state version 99"),
    ('{"format": "prunectl-state", "version": 1, "steps": {"score": {"status": "ok"}}}',
     "the record of step 'score' is damaged"),
])
def test_corrupt_or_foreign_state_is_an_error_and_left_untouched(project, content, fragment):
    project.root.mkdir(parents=True)
    state_file = project.path("state.json")
    state_file.write_text(content)
    for action in (lambda: project.record("x"), lambda: project.start("x", "fp"),
                   lambda: project.finish("x", "fp", [], {}, 0.0)):
        with pytest.raises(UserError, match=re.escape(fragment)) as info:
            action()
        assert str(state_file) in str(info.value) and "\n" not in str(info.value)
    assert state_file.read_text() == content


def test_fingerprint_changes_with_sections_and_inputs_only(project, tmp_path):
    data = project.path("calibration", "tokens.safetensors")
    data.parent.mkdir(parents=True)
    data.write_bytes(b"tokens-1")
    folder = project.path("pruned")
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    sections = {"model": {"path": "m"}, "target": {"blocks": 2}}
    base = project.fingerprint("search", sections, [data, folder])
    # an independent computation of the same hash
    folder_digest = hashlib.sha256(
        f"config.json\0{hashlib.sha256(b'{}').hexdigest()}\n".encode()).hexdigest()
    payload = {"step": "search", "prunectl": __version__, "sections": sections, "inputs": {
        "calibration/tokens.safetensors": hashlib.sha256(b"tokens-1").hexdigest(),
        "pruned": folder_digest}}
    expected = hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert base == expected
    # same content, key order and a fresh Project object: same fingerprint
    reordered = {"target": {"blocks": 2}, "model": {"path": "m"}}
    assert Project(project.root).fingerprint("search", reordered, [data, folder]) == base
    data.write_bytes(b"tokens-1")
    assert project.fingerprint("search", sections, [data, folder]) == base
    # anything it reads changes: the fingerprint changes
    assert project.fingerprint("search", {**sections, "target": {"blocks": 3}}, [data, folder]) != base
    assert project.fingerprint("score", sections, [data, folder]) != base
    data.write_bytes(b"tokens-2")
    assert project.fingerprint("search", sections, [data, folder]) != base
    data.write_bytes(b"tokens-1")
    (folder / "config.json").write_text('{"a": 1}')
    assert project.fingerprint("search", sections, [data, folder]) != base


def test_fingerprint_of_a_missing_input_names_the_step_to_run(project):
    with pytest.raises(UserError, match=r"step 'apply' needs .*plan\.json.*prunectl search -p"):
        project.fingerprint("apply", {}, [project.path("search", "plan.json")])


def test_pin_recipe_first_use_change_and_previous_copy(project):
    first = {"model": {"path": "m", "dtype": "float32"}, "method": {"name": "manual"},
             "recover": None, "eval": {"tasks": [], "limit": 0.0001}}
    assert project.pinned_recipe() is None
    project.root.mkdir(parents=True)
    assert project.pin_recipe(first) == []
    text = project.path("recipe.yaml").read_text()
    assert text.startswith("# Resolved recipe pinned by prunectl")
    assert yaml.safe_load(text) == first == project.pinned_recipe()
    assert project.pin_recipe(json.loads(json.dumps(first))) == []  # unchanged: not rewritten
    assert project.path("recipe.yaml").read_text() == text
    second = {**first, "model": {"path": "m", "dtype": "bfloat16"}, "target": {"blocks": 2}}
    second.pop("eval")
    assert project.pin_recipe(second) == ["model", "target", "eval"]
    assert project.pinned_recipe() == second
    assert project.path("recipe.previous.yaml").read_text() == text


@pytest.mark.parametrize("content, fragment", [
    ("model: [unclosed\n", "malformed YAML at line"),
    ("- just\n- a list\n", "not a mapping"),
])
def test_corrupt_pinned_recipe_is_an_error(project, content, fragment):
    project.root.mkdir(parents=True)
    project.path("recipe.yaml").write_text(content)
    with pytest.raises(UserError, match=fragment):
        project.pinned_recipe()
    with pytest.raises(UserError, match="recipe.yaml"):
        project.pin_recipe({"model": {"path": "m"}})
    assert project.path("recipe.yaml").read_text() == content


def test_lock_is_exclusive_reentrant_and_released(project):
    lock_file = project.path(".prunectl.lock")
    with project.lock() as note:
        assert note is None
        pid, host = lock_file.read_text().splitlines()[:2]
        assert int(pid) == __import__("os").getpid() and host == socket.gethostname()
        with Project(project.root).lock():  # the same process again: fine
            assert lock_file.exists()
        assert lock_file.exists()  # the inner exit did not release the outer hold
    assert not lock_file.exists()


def test_lock_held_by_a_live_process_names_it(project):
    project.root.mkdir(parents=True)
    holder = subprocess.Popen(["sleep", "30"])
    try:
        lock_file = project.path(".prunectl.lock")
        lock_file.write_text(f"{holder.pid}\n{socket.gethostname()}\n2026-01-01T00:00:00+00:00\n")
        with pytest.raises(UserError) as info:
            with project.lock():
                pass
        message = str(info.value)
        assert f"locked by process {holder.pid}" in message
        assert "started 2026-01-01T00:00:00+00:00" in message
        assert f"remove {lock_file}" in message
        assert lock_file.read_text().startswith(f"{holder.pid}\n")  # left alone
    finally:
        holder.kill()
        holder.wait()


def test_lock_held_by_a_zombie_or_dead_process_is_recovered(project):
    project.root.mkdir(parents=True)
    lock_file = project.path(".prunectl.lock")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    zombie_pid = zombie.pid
    import time

    while open(f"/proc/{zombie_pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.05)  # exited, not yet reaped by us: a zombie
    lock_file.write_text(f"{zombie_pid}\n{socket.gethostname()}\n2026-01-01T00:00:00+00:00\n")
    with project.lock() as note:
        assert f"stale lock of process {zombie_pid}" in note
        assert lock_file.read_text().startswith(f"{__import__('os').getpid()}\n")
    zombie.wait()
    lock_file.write_text(f"{zombie_pid}\n{socket.gethostname()}\n2026-01-01T00:00:00+00:00\n")
    with project.lock() as note:  # now reaped: plainly dead
        assert "recovered" in note
    assert not lock_file.exists()


def test_lock_of_a_reused_pid_is_stale(project):
    """A live process with the recorded pid but another start time is not the lock's owner."""
    project.root.mkdir(parents=True)
    holder = subprocess.Popen(["sleep", "30"])
    try:
        project.path(".prunectl.lock").write_text(
            f"{holder.pid}\n{socket.gethostname()}\n2026-01-01T00:00:00+00:00\n1\n")
        with project.lock() as note:
            assert "recovered" in note
    finally:
        holder.kill()
        holder.wait()


def test_lock_on_another_host_is_never_taken_over(project):
    project.root.mkdir(parents=True)
    project.path(".prunectl.lock").write_text("1\nsome-other-host\n2026-01-01T00:00:00+00:00\n")
    with pytest.raises(UserError, match="locked by process 1 on host some-other-host"):
        with project.lock():
            pass
