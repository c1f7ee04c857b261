"""``--quiet`` silences the libraries underneath too: transformers' GGUF de-quantization bar
(a bare tqdm its own switch does not reach) prints without it and not with it; errors and
warnings still print, each warning once; a piped or terminal ``-q`` run that succeeds prints
nothing, and the hub's retry lines are gone."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import transformers.modeling_gguf_pytorch_utils as gguf_loading
import yaml
from tqdm.auto import tqdm
from helpers import byte_tokenizer, save_tiny, tiny_model
from test_modeling_loading import write_tiny_gguf
from typer.testing import CliRunner

from prunectl import ui
from prunectl.cli import app

runner = CliRunner()
BAR = "de-quantizing GGUF tensors"


def test_quiet_silences_the_gguf_bar_but_not_errors(tmp_path, text_file, monkeypatch):
    # the loader's own bar, whatever an earlier --quiet run in this process left; restored after
    monkeypatch.setattr(gguf_loading, "tqdm", tqdm)
    monkeypatch.setattr(ui, "stderr_is_terminal", lambda: True)  # bars only show on a terminal
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_model("llama"), byte_tokenizer())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(gguf), "device": "cpu", "dtype": "float32"},
        "calibration": {"dataset": str(text_file), "nsamples": 2, "seqlen": 16},
        "method": {"name": "flap"}, "target": {"params_ratio": 0.2}}))
    loud = runner.invoke(app, ["calibrate", "-p", str(tmp_path / "loud"), "-r", str(recipe)])
    assert loud.exit_code == 0, loud.output
    assert BAR in loud.output
    quiet = runner.invoke(app, ["calibrate", "-p", str(tmp_path / "quiet"), "-r", str(recipe),
                                "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert BAR not in quiet.output and quiet.output.strip() == ""
    failed = runner.invoke(app, ["calibrate", "-p", str(tmp_path / "quiet"), "--quiet",
                                 "--set", "calibration.nsamples=0"])
    assert failed.exit_code == 2 and "calibration.nsamples" in failed.output


def test_warnings_print_with_quiet_and_once(capsys):
    quiet = ui.UI(quiet=True)
    quiet.info("a hint")
    quiet.warn("something to act on")
    quiet.warn("something to act on")
    assert capsys.readouterr().err.splitlines() == ["warning: something to act on"]
    ui.UI(quiet=True, warnings=False).warn("another rank's")  # torchrun: rank 0 speaks
    assert capsys.readouterr().err == ""


CLI = Path(sys.executable).parent / "prunectl"


def test_quiet_run_prints_nothing_piped_or_on_a_terminal(tmp_path, text_file):
    """Subprocesses: a pipe and a pseudo-terminal, where third-party bars decide differently."""
    model_dir = save_tiny(tmp_path / "tiny")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model_dir), "device": "cpu"},
        "calibration": {"dataset": str(text_file), "nsamples": 2, "seqlen": 16},
        "method": {"name": "mag-sp"}, "target": {"params_ratio": 0.2},
        "eval": {"perplexity": {"datasets": [str(text_file)], "seqlen": 32, "max_windows": 2}}}))
    piped = subprocess.run([CLI, "run", "-p", tmp_path / "piped", "-r", recipe, "-q"],
                           capture_output=True, text=True, timeout=600)
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert (piped.stdout, piped.stderr) == ("", "")
    assert (tmp_path / "piped" / "export" / "config.json").is_file()

    main, secondary = pty.openpty()
    process = subprocess.Popen([CLI, "run", "-p", tmp_path / "tty", "-r", recipe, "-q"],
                               stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert process.wait(timeout=600) == 0, seen[-2000:]
    assert seen == b""


def test_quiet_drops_the_hubs_retry_lines():
    """The hub logs "Retrying in 1s [Retry 1/5]." on its ``huggingface_hub.utils._http``
    logger; ``--quiet`` lowers the library loggers to errors."""
    retry = ("from huggingface_hub.utils._http import logger; "
             "logger.warning('Retrying in 1s [Retry 1/5].')")
    loud = subprocess.run([sys.executable, "-c", retry], capture_output=True, text=True,
                          timeout=600)
    assert "Retrying in 1s" in loud.stderr
    quiet = subprocess.run([sys.executable, "-c", "from prunectl.ui import silence_libraries; "
                            f"silence_libraries(True); {retry}"],
                           capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0 and quiet.stderr == ""
