"""The command line: every option has help and shows its default, bad values are one line and exit
status 2 (no traceback), the block size follows the device, and ``sparse-vdit eval`` runs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from sparse_vdit.cli import _build_parser, main
from sparse_vdit.cli_args import frame_count, resolve_block_size, video_side

COMMANDS = [("check",), ("demo",), ("eval",), ("search",), ("plan", "show")]


def _subparser(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_option_has_help_and_shows_its_default(path):
    parser = _subparser(_build_parser(), path)
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{path} {action.option_strings} has no help"
        shown = ("default" in action.help or action.default is not None or action.required
                 or isinstance(action, argparse._StoreTrueAction))
        assert shown, f"{path} {action.option_strings}: a None default must say what it means in its help"
        if action.default not in (None, False):
            assert "default" in parser._get_formatter()._get_help_string(action), action.option_strings
    assert "default:" in text


@pytest.mark.parametrize("argv, message", [
    (["eval", "--height", "50"], "50 is not a multiple of 16"),
    (["demo", "--width", "100"], "use 96 or 112"),
    (["eval", "--frames", "8"], "8 frames would be rounded by diffusers"),
    (["demo", "--frames", "12"], "use 9 or 13"),
    (["search", "--out", "x.json", "--steps", "0"], "0 must be at least 1"),
    (["eval", "--block-size", "100"], "invalid choice"),
    (["eval", "--methods", "plan,fast"], "unknown method(s) fast"),
    (["eval", "--epsilons", "a,b"], "comma-separated list of numbers"),
    (["demo", "--bogus"], "unrecognized arguments"),
])
def test_bad_values_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["demo"], ["eval"], ["search", "--out", "x.json"]], ids=lambda c: c[0])
def test_cuda_without_cuda_is_one_line(command, capsys):
    assert main([*command, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda") and "no CUDA device" in err and len(err.strip().splitlines()) == 1


def test_library_errors_are_one_line(capsys, tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text("{not json")
    assert main(["eval", "--plan", str(bad), "--methods", "plan", "--steps", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "JSON" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--model", str(tmp_path / "missing"), "--steps", "1"]) == 2
    assert "could not load the pipeline" in capsys.readouterr().err


def test_valid_values_and_the_block_size_per_device():
    assert video_side("64") == 64 and frame_count("33") == 33
    assert resolve_block_size(None, "cpu") == 16 and resolve_block_size(None, "cuda") == 128
    assert resolve_block_size(64, "cpu") == 64


@pytest.mark.slow
def test_eval_command_on_the_proxy(fallback, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--methods", "adaspa,window,svg", "--steps", "3", "--sparsities", "0.5", "--windows", "1",
            "--prompt", "a red circle moves right", "--out", str(out), "--no-plots", "--warmup", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    from pipelines.proxy import PROXY_CHECKPOINT

    untrained = not PROXY_CHECKPOINT.exists()
    assert ("random weights, quality numbers mean nothing" in printed) is untrained and "PyTorch fallback" in printed
    assert "adaspa (s=0.5)" in printed and "window (rows=1)" in printed and "svg (rows=1)" in printed
    data = json.loads((out / "report.json").read_text())
    assert data["meta"]["random_weights"] is untrained and data["meta"]["block_size"] == 16
    assert {r["method"] for r in data["rows"]} == {"dense", "adaspa", "window", "svg"}
    assert (out / "report.csv").exists() and (out / "videos").is_dir()


def test_help_runs_without_a_traceback():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for argv in (["--help"], ["eval", "--help"], ["demo", "--help"]):
        done = subprocess.run([sys.executable, "-m", "sparse_vdit.cli", *argv], capture_output=True, text=True, env=env,
                              timeout=120)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
