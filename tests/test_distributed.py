"""Two CPU processes with the gloo backend compute what one process computes: the block-search
order and perplexities, perplexity, FLAP calibration moments, Taylor scores and block-local
distillation (BLD) in the sequential pass.

The same ``_compute`` runs once here (no launcher variables: world size 1) and once in each of
two spawned ranks; every rank must hold the single-process numbers, and the ranks must agree
with each other bit for bit.  Shares are deliberately uneven (odd window and candidate counts).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import tiny_model, tiny_moe
from test_block_search import peaked_model, repeated_tokens, search
from test_bld import BLD
from test_bld import PLAN as BLD_PLAN

from prunectl import distributed
from prunectl.errors import UserError
from prunectl.evaluation.perplexity import perplexity
from prunectl.methods.inputs import Inputs
from prunectl.methods.reap.collect import collect_expert_stats
from prunectl.methods.taylor import TaylorConfig, TaylorMethod
from prunectl.methods.width.collect import collect_statistics
from prunectl.methods.width.reconstruct import least_squares_solutions
from prunectl.modeling.adapters import Adapter
from prunectl.pipelines.blocks.runner import Units
from prunectl.pipelines.layers import Layers

WORLD = 2
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def _ids(n: int, seqlen: int, seed: int) -> torch.Tensor:
    return torch.randint(4, 260, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _compute() -> dict:
    torch.set_num_threads(1)
    out = {}
    model, ids = peaked_model("llama", seed=1), repeated_tokens(1, windows=7)
    for early in (True, False):
        result = search(model, ids, steps=3, batch_size=1, early_stop=early)
        out[f"search_{early}"] = result.decisions
    small = tiny_model("llama", seed=2)
    stream = _ids(1, 9 * 16 + 5, 3)[0]  # 9 windows in batches of 2: 5 batches, tail dropped
    out["ppl"] = perplexity(small, stream, seqlen=16, batch_size=2)
    out["flap"] = collect_statistics(Layers(Adapter(small), _ids(5, 16, 4), batch_size=2))
    out["flap_one_window"] = collect_statistics(Layers(Adapter(small), _ids(1, 16, 5),
                                                       batch_size=2))
    out["reap"] = collect_expert_stats(Layers(Adapter(tiny_moe("qwen3_moe", seed=2)),
                                              _ids(5, 16, 4), 2))
    for importance, batch in (("element1", 2), ("element2", 1)):
        method = TaylorMethod(TaylorConfig(layer_start=1, layer_end=3, importance=importance,
                                           grad_batch_size=batch))
        out[f"taylor_{importance}"] = method.score(Inputs(small, _ids(5, 16, 6)), {})
    # 7 windows in batches of 3: rows split 2/1, 2/1 and 1/0 (rank 1 has none of the last)
    solutions = least_squares_solutions(Layers(Adapter(tiny_model("llama", seed=3)),
                                               _ids(7, 16, 7), 3), BLD_PLAN, "self", 1.0, bld=BLD)
    out["bld"] = {f"{key}.{name}": tensor for key, solution in solutions.items()
                  for name, tensor in [("weight", solution.weight), *solution.trained.items()]}
    return out


def _rank(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    try:
        group = distributed.current()
        assert (group.rank, group.world_size) == (rank, WORLD)
        torch.save(_compute(), os.path.join(folder, f"rank{rank}.pt"))
        group.barrier()  # tear down together: a rank leaving mid-exchange can abort gloo's threads
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def single_process_search(project: Path, model_dir: Path, layers: int, blocks: int):
    """The search one process computes on the project's calibration tokens."""
    from prunectl.io import load_tensors
    from prunectl.methods.block.search import SearchSettings, block_search
    from prunectl.methods.removal_order import StopRule, candidate_counts, candidate_names
    from prunectl.modeling.loading import load_project_model

    model = load_project_model(model_dir, torch.device("cpu"), torch.float32)
    tokens = load_tensors(project / "calibration" / "tokens.safetensors")["input_ids"]
    names = candidate_names(layers, "mix")
    return block_search(Units(model, tokens, 2), names, StopRule(blocks=blocks),
                        candidate_counts(model, names),
                        SearchSettings(batch_size=2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(single-process results, [rank 0 results, rank 1 results])."""
    folder = tmp_path_factory.mktemp("ranks")
    saved = {k: os.environ.pop(k) for k in LAUNCH_VARS if k in os.environ}
    threads = torch.get_num_threads()
    try:
        single = _compute()
        mp.spawn(_rank, args=(_free_port(), str(folder)), nprocs=WORLD, join=True)
    finally:
        torch.set_num_threads(threads)
        os.environ.update(saved)
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return single, ranks


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.fixture
def no_launcher(monkeypatch):
    """This process as if started without torchrun."""
    for key in LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)


def test_outside_a_launcher_the_group_is_one_process(no_launcher):
    group = distributed.current()
    assert (group.rank, group.world_size, group.enabled, group.is_main) == (0, 1, False, True)
    assert group.shard(list("abc")) == list("abc")
    t = torch.arange(3.0)
    assert group.sum(t) is t and group.gather_objects(5) == [5]


@pytest.mark.slow  # spawns processes
def test_ranks_agree_with_each_other_exactly(runs):
    _, (first, second) = runs
    for key in first:
        if key.startswith("search"):
            strip = [{k: v for k, v in d.items() if k != "seconds"} for d in first[key]]
            assert strip == [{k: v for k, v in d.items() if k != "seconds"} for d in second[key]]
            assert [d["seconds"] for d in first[key]] == [d["seconds"] for d in second[key]]
        elif isinstance(first[key], dict) and all(
                isinstance(v, torch.Tensor) for v in first[key].values()):
            for name, value in first[key].items():
                assert torch.equal(value, second[key][name]), (key, name)
        else:
            assert first[key] == second[key], key


@pytest.mark.slow  # spawns processes
def test_block_search_order_and_perplexities_equal_one_process(runs):
    single, ranks = runs
    for rank in ranks:
        for early in (True, False):
            one, many = single[f"search_{early}"], rank[f"search_{early}"]
            assert [d["removed"] for d in many] == [d["removed"] for d in one]
            assert [d["perplexity"] for d in many] == pytest.approx(
                [d["perplexity"] for d in one], rel=1e-6)
            assert many[0]["dense_perplexity"] == pytest.approx(one[0]["dense_perplexity"],
                                                                rel=1e-6)
            for a, b in zip(one, many):
                finished = [c for c in a["scores"]
                            if not a["scores"][c]["lower_bound"]
                            and not b["scores"][c]["lower_bound"]]
                assert set(a["scores"]) == set(b["scores"])
                assert [b["scores"][c]["ppl"] for c in finished] == pytest.approx(
                    [a["scores"][c]["ppl"] for c in finished], rel=1e-6)
        # without early stopping every score is finished, so all were compared above
        assert not any(s["lower_bound"] for d in rank["search_False"] for s in d["scores"].values())
    # early stopping actually abandoned candidates, so the exactness argument was exercised
    assert any(s["lower_bound"] for d in ranks[0]["search_True"] for s in d["scores"].values())


@pytest.mark.slow  # spawns processes
def test_perplexity_equals_one_process(runs):
    single, ranks = runs
    for rank in ranks:
        got, want = dict(rank["ppl"]), dict(single["ppl"])
        assert got.pop("perplexity") == pytest.approx(want.pop("perplexity"), rel=1e-12)
        assert got.pop("nll") == pytest.approx(want.pop("nll"), rel=1e-12)
        assert got == want and got["windows"] == 9


@pytest.mark.parametrize("key", ["flap", "flap_one_window"])
@pytest.mark.slow  # spawns processes
def test_flap_moments_equal_one_process(runs, key):
    single, ranks = runs
    for rank in ranks:
        assert rank[key].keys() == single[key].keys()
        for name, value in single[key].items():
            if name.endswith(".count"):
                assert torch.equal(rank[key][name], value)
            else:
                _close(rank[key][name], value)


def test_reap_expert_sums_equal_one_process(runs):
    single, ranks = runs
    for rank in ranks:
        assert rank["reap"].keys() == single["reap"].keys()
        for name, value in single["reap"].items():
            _close(rank["reap"][name], value)


@pytest.mark.parametrize("importance", ["element1", "element2"])
@pytest.mark.slow  # spawns processes
def test_taylor_scores_equal_one_process(runs, importance):
    single, ranks = runs
    key = f"taylor_{importance}"
    for rank in ranks:
        assert rank[key].keys() == single[key].keys()
        for name, value in single[key].items():
            torch.testing.assert_close(rank[key][name], value, rtol=1e-5, atol=1e-8)


@pytest.mark.slow  # spawns processes
def test_bld_equals_one_process_up_to_float_summation_order(runs):
    """Each rank trains on its rows of every batch with the summed gradient: the ranks hold the
    same weights (``test_ranks_agree_with_each_other_exactly``) and they equal one process's
    up to float32 summation order: every weight (about 0.3 at most) within 2e-6 after 24 Adam
    steps per block (measured: 4.2e-7 at most)."""
    single, ranks = runs
    assert len(single["bld"]) == 4 + 10  # o_proj/down_proj of 4 blocks, q/k/v or gate/up
    for rank in ranks:
        assert rank["bld"].keys() == single["bld"].keys()
        for name, value in single["bld"].items():
            torch.testing.assert_close(rank["bld"][name], value, rtol=0, atol=2e-6)


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(WORLD), "--no-python", str(Path(sys.executable).with_name("prunectl")), *args]


def _launch_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {
        "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow  # spawns processes
def test_torchrun_search_writes_once_and_equals_one_process(tmp_path, text_file):
    """`torchrun --nproc_per_node 2 prunectl search`: one progress line per decision (rank 0
    alone appends), the state recorded, and the order a single in-process search finds."""
    from helpers import save_tiny
    from test_block_cli import block_recipe


    model_dir = save_tiny(tmp_path / "tiny", "llama", num_hidden_layers=4)
    recipe = block_recipe(tmp_path / "recipe.yaml", model_dir, text_file)
    project = tmp_path / "project"
    command = _torchrun("search", "-p", str(project), "-r", str(recipe), "--quiet")
    done = subprocess.run(command, check=False,
                          capture_output=True, text=True, env=_launch_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    lines = (project / "search" / "progress.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5]
    state = json.loads((project / "state.json").read_text())
    assert state["steps"]["search"]["status"] == "done"
    plan = json.loads((project / "search" / "plan.json").read_text())

    alone = single_process_search(project, model_dir, layers=4, blocks=5)
    assert plan["removal_order"] == [d["removed"] for d in alone.decisions]
    assert [json.loads(line)["perplexity"] for line in lines] == pytest.approx(
        [d["perplexity"] for d in alone.decisions], rel=1e-6)


@pytest.mark.slow  # spawns processes
def test_torchrun_puzzle_library_equals_one_process_and_resumes_a_killed_one(tmp_path,
                                                                           text_file):
    """`torchrun --nproc_per_node 2 prunectl score` on a puzzle recipe splits the library's
    blocks across the ranks: the library is the one-process one byte for byte and the journal
    holds the same lines, each once (rank 0 alone writes); rank 0's time estimate counts every
    rank's variants.  A one-process build SIGKILLed after its 5th journal line (layer 0's MLP
    block ordered, one of its 4 variants scored) resumes under torchrun to the same library,
    keeping the lines it had."""
    from helpers import invoke, save_tiny, write_recipe
    from killpoints import kill_env, prunectl
    from test_puzzle_cli import SECTIONS

    from prunectl.io import load_tensors

    model_dir = save_tiny(tmp_path / "tiny", "llama")  # 4 layers: 8 blocks, 24 variants
    recipe = write_recipe(tmp_path / "recipe.yaml", model_dir, text_file, **SECTIONS)
    library, journal = "scores/scores.safetensors", "scores/progress/progress.jsonl"
    alone, split, resumed = (tmp_path / name for name in ("alone", "split", "resumed"))
    for project in (alone, split, resumed):
        assert invoke("calibrate", "-p", project, "-r", recipe, "--quiet").exit_code == 0
    done = prunectl("score", "-p", alone, "--quiet", env=_launch_env())
    assert done.returncode == 0, done.stderr[-3000:]
    want = load_tensors(alone / library)
    lines = sorted((alone / journal).read_text().splitlines())
    assert len(lines) == 8 + 24

    def torchrun(project: Path) -> str:
        done = subprocess.run(_torchrun("score", "-p", str(project)),
                              check=False, capture_output=True, text=True, env=_launch_env(),
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        got = load_tensors(project / library)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert (project / library).read_bytes() == (alone / library).read_bytes()
        assert sorted((project / journal).read_text().splitlines()) == lines
        return " ".join(done.stderr.split())

    said = torchrun(split)
    # rank 0 alone speaks; its estimate, after the first turn, counts rank 1's variants too:
    # 4 + 4 MLP variants of layers 0 and 1, 8 * 4 + 6 * 4 = 56 of the 128 units of work
    assert len(re.findall("to go", said)) == 1, said
    assert re.search(r"puzzle library: about \S+ \S+ to go, estimated from the first 8 "
                     r"variants \([^)]*, 44% of the work\)", said), said
    # heaviest block first (kl: a unit-u variant runs 9 - u units; 2 attention, 4 MLP variants),
    # one block per rank a turn, rank 0's lines before rank 1's
    blocks = [(r["layer"], r["block"]) for r in map(json.loads, (split / journal).read_text()
                                                    .splitlines()) if "order" in r]
    assert blocks == [(0, "mlp"), (1, "mlp"), (0, "attn"), (2, "mlp"),
                      (1, "attn"), (2, "attn"), (3, "mlp"), (3, "attn")]
    killed = prunectl("score", "-p", resumed, "--quiet",
                      env=kill_env(tmp_path / "hook", resumed, journal, "after", 5))
    assert killed.returncode == -9, killed.stderr[-3000:]
    before = (resumed / journal).read_bytes()
    assert before.count(b"\n") == 5
    torchrun(resumed)
    assert (resumed / journal).read_bytes().startswith(before)


def _worker(launcher: int, rank: int) -> int:
    """The pid of the launcher's child that runs ``rank``: its parent pid and ``RANK`` read from
    /proc, as an operator would find it."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"torchrun (pid {launcher}) has no worker with RANK={rank}")


def _complete_lines(file: Path) -> int:
    return file.read_bytes().count(b"\n") if file.exists() else 0


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank in /proc")
@pytest.mark.slow  # spawns processes
def test_a_killed_rank_stops_the_run_and_a_rerun_resumes(tmp_path, text_file):
    """SIGKILL rank 1 of `torchrun prunectl search` after decision 2: torchrun stops the group
    with a non-zero exit, rank 0 says so in one line and records the step as failed, the lock
    is released and no line is torn.  A single-process re-run (to 8 blocks) and then a torchrun
    re-run (to 12) keep every recorded line byte for byte (so nothing recorded was recomputed)
    and end with the order and perplexities of one uninterrupted single-process search."""
    from helpers import save_tiny
    from test_block_cli import block_recipe


    model_dir = save_tiny(tmp_path / "tiny", "llama", num_hidden_layers=8)  # 16 candidates
    recipe = block_recipe(tmp_path / "recipe.yaml", model_dir, text_file)
    project = tmp_path / "project"
    progress = project / "search" / "progress.jsonl"

    launcher = subprocess.Popen(
        _torchrun("search", "-p", str(project), "-r", str(recipe), "--blocks", "12", "--quiet"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_launch_env(),
        start_new_session=True)
    try:
        # decision 1 comes from `score`; decision 2 is the first the two ranks made together
        for _ in range(4800):  # 4 minutes at most
            if _complete_lines(progress) >= 2 or launcher.poll() is not None:
                break
            time.sleep(0.05)
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        os.kill(_worker(launcher.pid, 1), signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode != 0, stderr[-3000:]
    said = [line for line in stderr.splitlines() if re.match(
        r"(rank 0: stopped by SIGTERM|stopped: rank 0 of 2: )", line)]
    assert len(said) == 1 and said[0].endswith("re-run the same command to resume"), stderr
    assert "third_party/gloo" not in stderr  # gloo's reason is in that line, not a wall of it
    assert str(Path(distributed.__file__).parent) not in stderr  # no traceback through prunectl
    killed = progress.read_bytes()
    assert killed.endswith(b"\n")  # no half line
    recorded = [json.loads(line)["step"] for line in killed.splitlines()]
    assert recorded == list(range(1, len(recorded) + 1)) and 2 <= len(recorded) < 12
    state = json.loads((project / "state.json").read_text())["steps"]["search"]
    assert state["status"] == "failed", state
    assert state["error"].startswith(("Terminated: SIGTERM", "GroupError: rank 0 of 2")), state
    assert not (project / ".prunectl.lock").exists()

    alone = subprocess.run(
        [str(Path(sys.executable).with_name("prunectl")), "search", "-p", str(project),
         "--blocks", "8", "--json"],
        check=False, capture_output=True, text=True, env=_launch_env(), timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "lock" not in alone.stderr  # no stale lock to take over: rank 0 released it
    statuses = {s["step"]: s["status"] for s in json.loads(alone.stdout)["steps"]}
    assert statuses == {"calibrate": "up-to-date", "score": "up-to-date", "search": "done"}
    resumed = progress.read_bytes()
    assert resumed.startswith(killed)  # recorded decisions kept byte for byte, not recomputed
    assert [json.loads(line)["step"] for line in resumed.splitlines()] == list(range(1, 9))

    again = subprocess.run(_torchrun("search", "-p", str(project), "--blocks", "12", "--quiet"),
                           check=False, capture_output=True, text=True, env=_launch_env(),
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = progress.read_bytes()
    assert lines.startswith(resumed)
    assert [json.loads(line)["step"] for line in lines.splitlines()] == list(range(1, 13))
    assert json.loads((project / "state.json").read_text())["steps"]["search"]["status"] == "done"

    reference = single_process_search(project, model_dir, layers=8, blocks=12)
    plan = json.loads((project / "search" / "plan.json").read_text())
    assert plan["removal_order"] == [d["removed"] for d in reference.decisions]
    assert [json.loads(line)["perplexity"] for line in lines.splitlines()] == pytest.approx(
        [d["perplexity"] for d in reference.decisions], rel=1e-6)


@pytest.mark.parametrize("value, seconds", [(None, 600.0), ("", 600.0), ("90", 90.0),
                                            (" 2.5 ", 2.5)])
def test_the_collective_timeout_comes_from_the_environment(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv(distributed.TIMEOUT_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, value)
    assert distributed.timeout_seconds() == seconds


@pytest.mark.parametrize("value", ["ten", "0", "-5", "nan", "inf"])
def test_a_bad_collective_timeout_stops_before_the_group_forms(monkeypatch, value):
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, value)
    monkeypatch.setenv("WORLD_SIZE", "2")  # no peer and no store: only the check can answer
    with pytest.raises(UserError, match=rf"^PRUNECTL_DIST_TIMEOUT='{value}' is not a number of "
                                        r"seconds above 0; set it to e\.g\. 1800"):
        distributed.current()
    assert not dist.is_initialized()


def _rank_0_search(tmp_path, text_file, timeout_s: int):
    """A tiny block-search project and rank 0's environment of a 2-rank group whose collectives
    time out after ``timeout_s``; returns (project, env, run) where ``run()`` starts rank 0."""
    from helpers import save_tiny
    from test_block_cli import block_recipe

    model_dir = save_tiny(tmp_path / "tiny", "llama", num_hidden_layers=2)
    recipe = block_recipe(tmp_path / "recipe.yaml", model_dir, text_file)
    project = tmp_path / "project"
    env = _launch_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                      WORLD_SIZE=str(WORLD), PRUNECTL_DIST_TIMEOUT=str(timeout_s))

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(Path(sys.executable).with_name("prunectl")), "search", "-p", str(project),
             "-r", str(recipe), "--quiet"],
            check=False, capture_output=True, text=True,
            env=env | {"RANK": "0", "LOCAL_RANK": "0"}, timeout=300)

    return project, env, run


@pytest.mark.slow  # spawns a process
def test_a_rank_that_never_joins_stops_rank_0_at_the_rendezvous(tmp_path, text_file):
    """Rank 1 never starts: rank 0 gives up joining the group after PRUNECTL_DIST_TIMEOUT
    seconds with the same one line as any lost rank, exit 1, and touches no project file."""
    project, _env, run = _rank_0_search(tmp_path, text_file, 2)
    alone = run()
    assert alone.returncode == 1, alone.stderr
    assert re.fullmatch(
        r"stopped: rank 0 of 2: init_process_group failed \([^)]*\); another rank stopped, or "
        r"did not answer within 2 s \(PRUNECTL_DIST_TIMEOUT\); re-run the same command to "
        r"resume\n", alone.stderr, flags=re.IGNORECASE), alone.stderr
    assert not project.exists() or not any(project.iterdir())


@pytest.mark.slow  # spawns processes
def test_a_silent_rank_stops_rank_0_after_the_timeout(tmp_path, text_file):
    """Rank 1 joins the group and then never reaches a collective (alive, not dead: torchrun
    would not notice).  Rank 0 of `prunectl search` gives up at its first collective (the
    broadcast of the recipe it pinned) after PRUNECTL_DIST_TIMEOUT seconds with one line and
    exit 1, and releases the lock."""
    project, env, run = _rank_0_search(tmp_path, text_file, 10)
    silent = subprocess.Popen(
        [sys.executable, "-c",
         "import time, torch.distributed as d; d.init_process_group('gloo'); time.sleep(600)"],
        env=env | {"RANK": "1", "LOCAL_RANK": "1"})
    try:
        first = run()
    finally:
        silent.kill()
        silent.wait()
    assert first.returncode == 1, first.stderr
    assert re.fullmatch(
        r"stopped: rank 0 of 2: broadcast_object_list failed \([^)]*timed out[^)]*\); another "
        r"rank stopped, "
        r"or did not answer within 10 s \(PRUNECTL_DIST_TIMEOUT\); re-run the same command to "
        r"resume\n", first.stderr, flags=re.IGNORECASE), first.stderr
    assert not (project / ".prunectl.lock").exists()
    assert not (project / "state.json").exists()  # no step had started


def test_sigterm_stops_a_command_with_one_line_and_exit_143(no_launcher, capsys):
    """What rank 0 does when torchrun stops it: the handler raises where the command is, so
    context managers (the lock) and the step's failure record run; then one line, exit 143."""
    import typer

    from prunectl.cli import handles_errors

    unwound = []

    @handles_errors
    def command():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # not reached: the signal raises first
        finally:
            unwound.append(True)

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 143 and unwound == [True]
    assert capsys.readouterr().err == "stopped by SIGTERM; re-run the same command to resume\n"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back after the command


def test_sigterm_during_a_failure_lets_its_clean_up_finish(no_launcher, capsys):
    """The lost-rank race: the collective's error is being handled (the step records its
    failure) when the launcher's SIGTERM arrives; the clean-up finishes and the error's own
    line is printed.  A SIGTERM whose failure was then swallowed still stops the command when
    it returns."""
    import typer

    from prunectl.cli import Terminated, _sigterm_raises, handles_errors

    recorded = []

    @handles_errors
    def command():
        try:
            raise distributed.GroupError("rank 0 of 2: barrier failed (gone)")
        except distributed.GroupError:
            os.kill(os.getpid(), signal.SIGTERM)
            recorded.append("failed")  # what execute() does here: log and state.json
            raise

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 1 and recorded == ["failed"]
    assert capsys.readouterr().err == (
        "stopped: rank 0 of 2: barrier failed (gone); re-run the same command to resume\n")

    with _sigterm_raises() as raise_deferred:
        try:
            raise ValueError("handled and swallowed")
        except ValueError:
            os.kill(os.getpid(), signal.SIGTERM)
        recorded.append("went on")
        with pytest.raises(Terminated):
            raise_deferred()
    assert recorded == ["failed", "went on"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
