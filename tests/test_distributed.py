"""Two CPU processes with the gloo backend compute what one process computes: the block-search
order and perplexities, perplexity, FLAP calibration moments and Taylor scores.

The same ``_compute`` runs once here (no launcher variables: world size 1) and once in each of
two spawned ranks; every rank must hold the single-process numbers, and the ranks must agree
with each other bit for bit.  Shares are deliberately uneven (odd window and candidate counts).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_model
from test_block_search import peaked_model, repeated_tokens, search

from prunectl import distributed
from prunectl.evaluation.perplexity import perplexity
from prunectl.methods.flap.collect import collect_statistics
from prunectl.methods.taylor import TaylorConfig, TaylorMethod
from prunectl.modeling.adapters import Adapter
from prunectl.ui import SILENT

pytestmark = pytest.mark.slow
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
    out["flap"] = collect_statistics(Adapter(small), _ids(5, 16, 4), batch_size=2)
    out["flap_one_window"] = collect_statistics(Adapter(small), _ids(1, 16, 5), batch_size=2)
    run = SimpleNamespace(ui=SILENT)
    for importance, batch in (("element1", 2), ("element2", 1)):
        method = TaylorMethod(TaylorConfig(layer_start=1, layer_end=3, importance=importance,
                                           grad_batch_size=batch))
        out[f"taylor_{importance}"] = method.score(run, small, _ids(5, 16, 6), {})
    return out


def _rank(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    try:
        group = distributed.current()
        assert (group.rank, group.world_size) == (rank, WORLD)
        torch.save(_compute(), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


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


def test_outside_a_launcher_the_group_is_one_process(monkeypatch):
    for key in LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)
    group = distributed.current()
    assert (group.rank, group.world_size, group.enabled, group.is_main) == (0, 1, False, True)
    assert group.shard(list("abc")) == list("abc")
    t = torch.arange(3.0)
    assert group.sum(t) is t and group.gather_objects(5) == [5]


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


def test_perplexity_equals_one_process(runs):
    single, ranks = runs
    for rank in ranks:
        got, want = dict(rank["ppl"]), dict(single["ppl"])
        assert got.pop("perplexity") == pytest.approx(want.pop("perplexity"), rel=1e-12)
        assert got.pop("nll") == pytest.approx(want.pop("nll"), rel=1e-12)
        assert got == want and got["windows"] == 9


@pytest.mark.parametrize("key", ["flap", "flap_one_window"])
def test_flap_moments_equal_one_process(runs, key):
    single, ranks = runs
    for rank in ranks:
        assert rank[key].keys() == single[key].keys()
        for name, value in single[key].items():
            if name.endswith(".count"):
                assert torch.equal(rank[key][name], value)
            else:
                _close(rank[key][name], value)


@pytest.mark.parametrize("importance", ["element1", "element2"])
def test_taylor_scores_equal_one_process(runs, importance):
    single, ranks = runs
    key = f"taylor_{importance}"
    for rank in ranks:
        assert rank[key].keys() == single[key].keys()
        for name, value in single[key].items():
            torch.testing.assert_close(rank[key][name], value, rtol=1e-5, atol=1e-8)


def test_torchrun_search_writes_once_and_equals_one_process(tmp_path, text_file):
    """`torchrun --nproc_per_node 2 prunectl search`: one progress line per decision (rank 0
    alone appends), the state recorded, and the order a single in-process search finds."""
    from conftest import save_tiny
    from test_block_cli import write_recipe

    from prunectl.io import load_tensors
    from prunectl.methods.block.candidates import candidate_names
    from prunectl.methods.block.plans import parameter_counts
    from prunectl.methods.block.search import SearchSettings, Target, block_search
    from prunectl.modeling.loading import load_project_model

    model_dir = save_tiny(tmp_path / "tiny", "llama", num_hidden_layers=4)
    recipe = write_recipe(tmp_path / "recipe.yaml", model_dir, text_file)
    project = tmp_path / "project"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(WORLD), "--no-python",
                str(Path(sys.executable).with_name("prunectl"))]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"OMP_NUM_THREADS": "1"}
    command = [*launcher, "search", "-p", str(project), "-r", str(recipe), "--quiet"]
    done = subprocess.run(command, check=False,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    lines = (project / "search" / "progress.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5]
    state = json.loads((project / "state.json").read_text())
    assert state["steps"]["search"]["status"] == "done"
    plan = json.loads((project / "search" / "plan.json").read_text())

    model = load_project_model(model_dir, torch.device("cpu"), torch.float32)
    tokens = load_tensors(project / "calibration" / "tokens.safetensors")["input_ids"]
    names = candidate_names(4, "mix")
    alone = block_search(model, tokens, names, Target(blocks=5),
                         parameter_counts(model, Adapter(model), names),
                         SearchSettings(batch_size=2))
    assert plan["removal_order"] == [d["removed"] for d in alone.decisions]
    assert [json.loads(line)["perplexity"] for line in lines] == pytest.approx(
        [d["perplexity"] for d in alone.decisions], rel=1e-6)
