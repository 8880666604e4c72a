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
from sparse_vdit.cli.args import frame_count, resolve_block_size, video_side

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
    argv = ["eval", "--plan", str(bad), "--methods", "plan", "--steps", "1", "--out", str(tmp_path)]
    # The first call may be the process's first import of diffusers, whose optional packages (torchao)
    # log one-time warnings to stderr; the command's own output is what the second call shows.
    assert main(argv) == 2
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "JSON" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--model", str(tmp_path / "missing"), "--steps", "1"]) == 2
    assert "could not load the pipeline" in capsys.readouterr().err


def test_eval_compile_with_a_short_warm_up_is_refused_before_the_model_loads(capsys, tmp_path, monkeypatch):
    import pipelines.loading

    monkeypatch.setattr(pipelines.loading, "open_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["eval", "--compile", "--warmup", "2", "--steps", "4", "--out", str(tmp_path / "out")]) == 2
    assert "full-length warm-up" in capsys.readouterr().err


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


# ------------------------------------------------------------------ bad values caught before any model loads
@pytest.fixture
def no_model(monkeypatch):
    """Loading a model is an error: the checks under test must come first."""
    import pipelines.loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad value was refused")

    monkeypatch.setattr(pipelines.loading, "load_pipeline", refuse)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("device, message", [
    ("meta", "--device meta is not supported: use cuda, cuda:N or cpu"),
    ("mps", "--device mps is not supported: use cuda, cuda:N or cpu"),
    ("", "--device is empty: use cuda, cuda:N or cpu"),
    ("gpu", "--device 'gpu' is not a device: use cuda, cuda:N or cpu"),
])
@pytest.mark.parametrize("command", [["demo"], ["eval"], ["search", "--out", "x.json"]], ids=lambda c: c[0])
def test_devices_torch_has_but_we_do_not_serve_are_one_line(command, device, message, capsys, no_model, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--device", device]) == 2
    assert message in _one_error_line(capsys)


@pytest.mark.parametrize("argv, message", [
    (["search", "--out", "x.json", "--seed", str(2**64)], "argument --seed: 18446744073709551616 is outside 0 .. 2^64 - 1"),
    (["eval", "--seed", "-1"], "argument --seed: -1 is outside 0 .. 2^64 - 1"),
    (["demo", "--seed", "1e3"], "argument --seed: '1e3' is not an integer"),
    (["eval", "--warmup", "-1"], "argument --warmup: -1 must be at least 0"),
    (["eval", "--height", "16000"], "argument --height: 16000 is more than 4096"),
    (["demo", "--width", str(16 * 10**6)], "is more than 4096"),
    (["eval", "--frames", "100001"], "argument --frames: 100001 is more than 1025"),
    (["check", "--frames", "100000"], "argument --frames: 100000 is more than 64"),
    (["check", "--head-dim", "8"], "argument --head-dim: 8 must be at least 16"),
    (["check", "--head-dim", "320"], "argument --head-dim: 320 is more than 256"),
])
def test_values_past_what_can_run_are_refused_by_the_parser(argv, message, capsys, no_model):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in _one_error_line(capsys)


def test_the_search_output_is_checked_before_the_search(tmp_path, capsys, no_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    cases = [
        (str(notes / "plan.json"), f"--out {notes / 'plan.json'}: {notes} is a file, not a folder"),
        ("", "--out is empty: give the plan's file name, e.g. --out plan.json"),
        (str(notes), f"--out {notes} exists and is not a sparse-vdit plan: pass another --out, or --force to overwrite it"),
    ]
    for out, message in cases:
        assert main(["search", "--out", out]) == 2
        assert message in _one_error_line(capsys)
    assert notes.read_text() == "my notes\n", "an unrelated file is never overwritten"


@pytest.mark.parametrize("command, option", [(["eval"], "--out"), (["demo"], "--output-dir")], ids=["eval", "demo"])
def test_output_folders_are_checked_before_the_model_loads(command, option, tmp_path, capsys, no_model):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert main([*command, option, str(notes)]) == 2
    assert f"{option} {notes} is a file, not a folder" in _one_error_line(capsys)
    assert main([*command, option, ""]) == 2
    assert f"{option} is empty" in _one_error_line(capsys)


def test_an_existing_plan_may_be_replaced(tmp_path):
    from sparse_vdit.cli.args import check_output_file
    from sparse_vdit.plan_file import looks_like_plan, save_plan
    from test_plan import A, make_plan

    path = save_plan(make_plan([A]), tmp_path / "plan.json")
    assert looks_like_plan(path)
    assert check_output_file(str(path), "--out", is_ours=looks_like_plan) == path
    assert check_output_file(str(tmp_path), "--out", is_ours=looks_like_plan) == path, "a folder: its plan.json"
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    assert check_output_file(str(other), "--out", is_ours=looks_like_plan, force=True) == other


def test_running_out_of_memory_is_one_line(capsys):
    from sparse_vdit.cli.args import run_command

    def allocate(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 85899345920 bytes.")

    assert run_command(allocate, argparse.Namespace()) == 2
    err = _one_error_line(capsys)
    assert "out of memory" in err and "--height, --width or --frames" in err


@pytest.mark.parametrize("argv, message", [
    (["demo", "--sparsity", "1.5"], "sparsity must be a number in [0, 1)"),
    (["demo", "--epsilon", "0"], "epsilon must be a finite number > 0"),
    (["eval", "--sparsities", "0.5,1.2"], "sparsity must be a number in [0, 1)"),
    (["eval", "--epsilons", "0.1,-1"], "epsilon must be a finite number > 0"),
    (["eval", "--windows", "1,-2"], "--windows must be half-widths >= 0"),
    (["search", "--out", "x.json", "--lam", "nan"], "lambda must be a finite number >= 0"),
])
def test_method_settings_are_checked_before_the_model_loads(argv, message, capsys, no_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in _one_error_line(capsys)


def test_a_model_name_typo_never_reaches_the_hub(capsys, monkeypatch):
    import diffusers

    def hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", hub)
    assert main(["eval", "--model", "prox", "--steps", "1"]) == 2
    err = _one_error_line(capsys)
    assert "could not load the pipeline 'prox': it is not 'proxy', an existing folder, nor a Hub repo id" in err
    assert "did you mean 'proxy'?" in err
    assert len(err) < 200


def test_a_model_that_fails_to_load_is_one_short_line(capsys, monkeypatch):
    import diffusers

    def hub(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in "
                      "the cached files. Check your internet connection or see how to run the library in offline mode "
                      "at 'https://huggingface.co/docs/diffusers/installation#offline-mode'. " * 3)

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", hub)
    assert main(["eval", "--model", "someone/some-model", "--steps", "1"]) == 2
    err = _one_error_line(capsys)
    assert "could not load the pipeline 'someone/some-model' (OSError: We couldn't connect" in err and len(err) < 300


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_a_plain_description_and_says_a_default_once(path):
    parser = _subparser(_build_parser(), path)
    assert parser.description and len(parser.description) > 40, f"{path} has no description"
    text = parser.format_help()
    assert "``" not in text, "reStructuredText quoting in --help"
    groups = [g.description for g in parser._action_groups if g.description and g.description.startswith("Defaults:")]
    for description in groups:
        assert " ".join(text.split()).count(" ".join(description.split())) == 1


def test_plan_show_counts_and_agreement_read_as_english(tmp_path, capsys):
    from sparse_vdit.plan_file import save_plan
    from test_plan import A, make_plan

    calibration = {"prompts": ["a cat"], "seeds": [0], "consistency": 1.0, "method": "majority",
                   "agreement_same_prompt": 1.0, "agreement_other_prompt": 0.25}
    path = save_plan(make_plan([A], calibration=calibration), tmp_path / "plan.json")
    assert main(["plan", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(majority, 1 prompt, 1 seed)" in out
    assert "two runs of one prompt agree on 100.0%, two runs of other prompts agree on 25.0%" in out


def test_default_output_folders_are_ignored_by_git():
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    parser = _build_parser()
    folders = [_subparser(parser, ("demo",)).get_default("output_dir"), _subparser(parser, ("eval",)).get_default("out"),
               "notebooks/notebook-eval"]
    for folder in folders:
        done = subprocess.run(["git", "check-ignore", "-q", f"{folder}/report.json"], cwd=root)
        assert done.returncode == 0, f"{folder}/ would show up as untracked files"


def test_help_imports_neither_torch_nor_diffusers():
    """--help is fast: building every parser imports no torch or diffusers (5 s of imports before)."""
    code = ("import sys, argparse; from sparse_vdit.cli import _build_parser; p = _build_parser(); "
            "[a.choices[c].format_help() for a in p._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices]; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
