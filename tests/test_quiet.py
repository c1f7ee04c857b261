"""``--quiet`` silences the libraries underneath too: transformers' GGUF de-quantization bar
(a bare tqdm its own switch does not reach) prints without it and not with it; errors still
print."""

from __future__ import annotations

import transformers.modeling_gguf_pytorch_utils as gguf_loading
import yaml
from tqdm.auto import tqdm
from conftest import byte_tokenizer, tiny_model
from test_modeling_loading import write_tiny_gguf
from typer.testing import CliRunner

from prunectl.cli import app

runner = CliRunner()
BAR = "de-quantizing GGUF tensors"


def test_quiet_silences_the_gguf_bar_but_not_errors(tmp_path, text_file, monkeypatch):
    # the loader's own bar, whatever an earlier --quiet run in this process left; restored after
    monkeypatch.setattr(gguf_loading, "tqdm", tqdm)
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
