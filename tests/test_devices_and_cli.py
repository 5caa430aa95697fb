"""Device selection (GRADER_DEVICES) and the `python -m grader` command line."""

import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from grader import check_trainable_count
from grader.checks import devices


def test_default_matrix_is_cpu_plus_visible_cuda(monkeypatch):
    monkeypatch.delenv("GRADER_DEVICES", raising=False)
    expected = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    assert [str(d) for d in devices.selected()] == expected


def test_forced_matrix_is_used_and_deduplicated(monkeypatch):
    monkeypatch.setenv("GRADER_DEVICES", " cpu, cpu ,")
    assert [str(d) for d in devices.selected()] == ["cpu"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_forced_cuda_fails_loudly_without_a_gpu(monkeypatch):
    monkeypatch.setenv("GRADER_DEVICES", "cpu,cuda")
    with pytest.raises(RuntimeError, match="asks for cuda, but torch.cuda.is_available\\(\\) is False"):
        devices.selected()
    with pytest.raises(RuntimeError, match="no usable GPU"):
        check_trainable_count(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("spec, message", [("gpu", "'gpu' is not a torch device"), ("mps", "not mps"), (",", "names no device")])
def test_bad_device_names_are_explained(monkeypatch, spec, message):
    monkeypatch.setenv("GRADER_DEVICES", spec)
    with pytest.raises(ValueError, match=message):
        devices.selected()


@pytest.mark.device
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_verdict_names_every_device(monkeypatch, capsys):
    monkeypatch.setenv("GRADER_DEVICES", "cpu,cuda")
    check_trainable_count(torch.nn.Linear(2, 2))
    assert capsys.readouterr().out.rstrip().endswith("[cpu, cuda]")


def grader_cli(*args):
    return subprocess.run([sys.executable, "-m", "grader", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_devices_and_check(tmp_path):
    assert grader_cli("devices").stdout.strip().startswith("cpu")
    models = tmp_path / "models.py"
    models.write_text((ROOT / "tests" / "broken_models.py").read_text())
    good = grader_cli("check", f"{models}:GoodMLP", "--example", "8,20")
    assert good.returncode == 0 and good.stdout.count("✓") == 5, good.stdout + good.stderr
    bad = grader_cli("check", f"{models}:ListOfLayers", "--example", "8,20")
    assert bad.returncode == 1 and "use nn.ModuleList" in bad.stdout
    assert grader_cli("check", f"{models}:Nope", "--example", "8,20").returncode != 0
    wrong_shape = grader_cli("check", f"{models}:GoodMLP", "--example", "8,x")
    assert wrong_shape.returncode == 2 and "expected sizes such as 8,20" in wrong_shape.stderr
