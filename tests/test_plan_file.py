"""Plan files: save/load round trip, the size of a 50-step 40-layer 40-head plan, every malformed
file refused with a message that says what is wrong and what to do, Hub repo ids through
``huggingface_hub.hf_hub_download`` (mocked: no network), and ``sparse-vdit plan show``."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_vdit import Plan, PlanError, load_plan, save_plan
from sparse_vdit.cli import main
from sparse_vdit.modes import Diagonal, Full, MultiDiagonal, Skip, VerticalStripe
from sparse_vdit.plan import CostTable
from sparse_vdit.plan_file import plan_to_dict
from sparse_vdit.protocol import ModelInfo
from sparse_vdit.token_layout import TokenLayout
from test_plan import A, B, make_plan

REPO_ROOT = Path(__file__).resolve().parents[1]


def assert_same_plan(a: Plan, b: Plan) -> None:
    for f in dataclasses.fields(Plan):
        if f.init:
            assert getattr(a, f.name) == getattr(b, f.name), f.name


@pytest.fixture
def plan() -> Plan:
    return make_plan([A, A, B], calibration={"prompts": ["a cat"], "seeds": [0, 1], "consistency": 0.93, "method": "majority"})


@pytest.fixture
def saved(plan, tmp_path) -> Path:
    return save_plan(plan, tmp_path / "plan.json")


# ------------------------------------------------------------------------------ round trip
def test_round_trip(plan, tmp_path):
    path = save_plan(plan, tmp_path / "sub" / "my_plan.json")
    assert path == tmp_path / "sub" / "my_plan.json"
    loaded = load_plan(path)
    assert_same_plan(loaded, plan)
    assert loaded.model.config_fingerprint == plan.model.config_fingerprint
    assert_same_plan(load_plan(str(path)), plan)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["sparse_vdit_version"]
    assert {"mode": "diagonal", "rows": 1} in data["modes"]
    assert {"mode": "vertical_stripe", "frames": [0, -1], "row_stride": 2} in data["modes"]
    assert [(s["start"], s["end"]) for s in data["steps"]] == [(0, 2), (2, 3)]


def test_a_folder_saves_and_loads_plan_json(plan, tmp_path):
    assert save_plan(plan, tmp_path) == tmp_path / "plan.json"
    assert_same_plan(load_plan(tmp_path), plan)
    os.rename(tmp_path / "plan.json", tmp_path / "other.json")
    assert_same_plan(load_plan(tmp_path, filename="other.json"), plan)
    with pytest.raises(PlanError, match="is a folder without plan.json: pass the plan file itself, or filename="):
        load_plan(tmp_path)


MODES_20 = (
    [Full(), Skip()] + [Diagonal(r) for r in (1, 2, 4, 8)] + [MultiDiagonal(r, f) for r in (1, 2, 4) for f in (None, 2, 4)]
    + [VerticalStripe(frames, stride) for frames in ((0,), (0, -1)) for stride in (1, 2)] + [VerticalStripe((0, 10, -1), 1)]
)


def wan14b_plan(repeat: int) -> Plan:
    """50 steps x 40 layers x 40 heads over 21 modes at random; consecutive steps repeat ``repeat`` times."""
    layers = tuple(f"blocks.{i}.attn1" for i in range(40))
    model = ModelInfo("WanTransformer3DModel", 40, 40, 128, layers, "none", (1, 2, 2))
    rng = random.Random(0)
    steps = []
    for _ in range(50 // repeat):
        steps += [tuple(tuple(rng.choice(MODES_20) for _ in range(40)) for _ in range(40))] * repeat
    costs = CostTable("measured", "NVIDIA H200", "40 heads x 21x45x80 video tokens (75600 total), block 128, bfloat16",
                      tuple((m, rng.random()) for m in MODES_20))
    return make_plan(steps, model=model, model_config={}, layout=TokenLayout(21, 45, 80), block_size=128, cost=costs)


def test_a_50_step_40_layer_40_head_plan_stays_small(tmp_path):
    sizes = {}
    for repeat in (5, 1):
        plan = wan14b_plan(repeat)
        assert len(plan.steps) == 50 // repeat
        path = save_plan(plan, tmp_path / f"plan{repeat}.json")
        sizes[repeat] = path.stat().st_size
        assert_same_plan(load_plan(path), plan)
    # Measured: 62 KB with ranges of 5 steps, 300 KB with every step different (README).
    assert sizes[5] < 80_000 and sizes[1] < 350_000
    assert sizes[1] > 4 * sizes[5]


# ------------------------------------------------------------------------------ malformed files
def _edit(change):
    def apply(data):
        change(data)
        return json.dumps(data)

    return apply


def _set(path: str, value):
    """Set data[a][b]... (path "a.b.0") to value."""

    def change(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return _edit(change)


def _delete(key: str):
    return _edit(lambda data: data.pop(key))


MALFORMED = {
    "not JSON": (lambda data: "steps: 0-10 diagonal", r"not JSON \(Expecting value at line 1, column 1\): pass a plan file written by save_plan"),
    "truncated": (lambda data: json.dumps(data)[:-40], r"the file is truncated .*save or download it again"),
    "empty": (lambda data: "  \n", r"the file is empty"),
    "not a plan": (lambda data: json.dumps([1, 2]), r"not a sparse-vdit plan"),
    "newer schema": (_set("schema_version", 2), r"schema version 2 is newer than this sparse-vdit reads \(1.*upgrade sparse-vdit"),
    "unknown schema": (_set("schema_version", "one"), r"unknown schema version \"one\""),
    "missing field": (_delete("lambda"), r"the plan lacks 'lambda': the file is incomplete; save the plan again"),
    "unknown field": (_set("lamda", 0.5), r"unknown field\(s\) 'lamda'"),
    "unknown mode": (_set("modes.0", {"mode": "diagonal_band", "rows": 2}),
                     r"modes\[0\]: unknown mode 'diagonal_band': the modes are full, skip, diagonal, multi_diagonal, vertical_stripe.*upgrade sparse-vdit"),
    "unknown parameter": (_set("modes.0", {"mode": "diagonal", "rows": 2, "cols": 3}), r"modes\[0\]: diagonal has no parameter 'cols': its parameters are rows"),
    "bad parameter": (_set("modes.0", {"mode": "diagonal", "rows": -2}), r"modes\[0\]: diagonal .*rows must be >= 0"),
    "mode index out of range": (_set("steps.0.layers.2.1", 99), r"steps\[0\]\.layers\[2\]\[1\]: mode index 99 is out of range: the modes table has 7 entries"),
    "mode index not an integer": (_set("steps.0.layers.2.1", "full"), r"steps\[0\]\.layers\[2\]\[1\] must be a mode index"),
    "layer count": (_edit(lambda d: d["steps"][1]["layers"].pop()), r"steps\[1\] \(searched steps 2..2\) has 2 layers, but the plan's model \(WanTransformer3DModel\) has 3"),
    "head count": (_edit(lambda d: d["steps"][0]["layers"][0].append(0)), r"steps\[0\] .* layer 0 has 3 heads, but the plan's model has 2"),
    "model layer count": (_set("model.num_layers", 4), r"model: 3 layer names for 4 layers"),
    "ranges not contiguous": (_set("steps.1.start", 1), r"steps\[1\] .* overlaps the range before it"),
    "range out of range": (_set("steps.1.end", 9), r"steps\[1\] .* is out of range: the plan has 3 steps \(0..2\)"),
    "ranges not covering": (_set("num_steps", 5), r"steps 3..4 have no modes"),
    "negative lambda": (_set("lambda", -1), r"lam must be a finite number >= 0, got -1"),
    "non-numeric epsilon": (_set("epsilon", "1.0"), r"plan\.epsilon must be a number, got \"1.0\""),
    "negative cost": (_set("cost.costs.0", [0, -0.3]), r"cost of \w+\(.*\) must be a finite number >= 0, got -0.3"),
    "cost not a pair": (_set("cost.costs.0", [0]), r"cost\.costs\[0\] must be a \[mode index, cost\] pair"),
    "unknown cost source": (_set("cost.source", "guess"), r"cost source 'guess' is unknown: it is one of measured, flops"),
    "block size not served": (_set("block_size", 96), r"block_size 96 is not served by the block-sparse kernel: use one of 16, 32, 64, 128"),
    "bad token layout": (_set("token_layout.rows", 0), r"token_layout: frames, rows and cols must be >= 1"),
    "bad patch size": (_set("model.patch_size", [1, 2]), r"model\.patch_size must be 3 integers"),
    "edited config": (_set("model_config.eps", 1.0), r"model_config does not match the model's config_fingerprint"),
    "nested too deeply": (lambda data: '{"schema_version": 1, "model_config": ' + "[" * 100_000 + "]" * 100_000 + "}",
                          r"nested too deeply"),
    "integer too long": (lambda data: json.dumps(data).replace('"num_steps": 3', '"num_steps": ' + "9" * 5000),
                         r"a number too long to read \(5000 digits\)"),
    "duplicate key": (lambda data: json.dumps(data).replace('"num_steps": 3', '"num_steps": 3, "num_steps": 2'),
                      r"the key 'num_steps' appears twice in one object: which one counts is ambiguous"),
    "duplicate nested key": (lambda data: json.dumps(data).replace('"rows": 1}', '"rows": 1, "rows": 4}', 1),
                             r"the key 'rows' appears twice"),
    "huge token layout": (_set("token_layout.frames", 10**6), r"token_layout .* is too large"),
    "huge token rows": (_set("token_layout.cols", 10**9), r"token_layout .* is too large"),
    "negative text": (_set("token_layout.text_len", -5), r"token_layout: text_len must be an integer >= 0, got -5"),
    "empty fingerprint": (_set("model.config_fingerprint", ""), r"model_config does not match the model's config_fingerprint"),
    "bad fingerprint": (_set("model.config_fingerprint", "abc"), r"config_fingerprint must be a sha256"),
    "schema as a string": (_set("schema_version", "1"), r'schema_version must be the integer 1, not the string "1"'),
    "every head skipped": (_edit(lambda d: [r.update(layers=[[d["modes"].index({"mode": "skip"})] * 2] * 3)
                                            for r in d["steps"]]),
                           r"every head of this plan costs 0"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_plans_say_what_is_wrong(case, plan, tmp_path):
    make_text, message = MALFORMED[case]
    path = tmp_path / "plan.json"
    path.write_text(make_text(copy.deepcopy(plan_to_dict(plan))))
    with pytest.raises(PlanError, match=message) as info:
        load_plan(path)
    assert str(info.value).startswith(str(path) + ": ")


def test_the_density_and_speedup_shown_are_those_of_the_modes(plan, tmp_path):
    """A file's expected_density and predicted_speedup are recomputed from its modes and costs: an
    edited header cannot make a plan look sparser or faster than it is."""
    data = plan_to_dict(plan)
    data.update(expected_density=0.01, predicted_speedup=50.0)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    loaded = load_plan(path)
    assert loaded.expected_density == pytest.approx(plan.computed_density())
    assert loaded.predicted_speedup == pytest.approx(plan.computed_speedup())
    assert (loaded.expected_density, loaded.predicted_speedup) != (0.01, 50.0)


def _load_in_thread(path, seconds: float = 20.0):
    """load_plan(path) in a daemon thread: (finished in time, the exception it raised)."""
    import threading

    result = {}

    def run():
        try:
            load_plan(path)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), result.get("error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_or_a_device_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        if not path.exists():
            continue
        finished, error = _load_in_thread(path)
        assert finished, f"load_plan({path}) blocked"
        assert isinstance(error, PlanError) and "not a regular file" in str(error), error


def test_a_file_far_larger_than_any_plan_is_refused_unread(tmp_path):
    path = tmp_path / "plan.json"
    with open(path, "wb") as f:
        f.truncate(200 * 2**20)  # sparse: no disk used
    with pytest.raises(PlanError, match=r"200.0 MiB, far more than any plan \(at most 64 MiB\)"):
        load_plan(path)


def test_a_broken_symlink_is_not_taken_for_a_hub_repo_id(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raises(AssertionError("the Hub was asked")))
    (tmp_path / "plans").mkdir()
    link = tmp_path / "plans" / "latest"
    link.symlink_to("missing/plan.json")
    monkeypatch.chdir(tmp_path)
    for name in ("plans/latest", str(link)):
        with pytest.raises(PlanError, match=r"is a symbolic link to missing/plan.json, which does not exist"):
            load_plan(name)


def test_a_binary_file_is_not_a_plan(tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(PlanError, match="not a plan file \\(not UTF-8 text\\)"):
        load_plan(path)


def test_a_missing_path_that_is_no_repo_id_is_a_clear_error(tmp_path):
    for missing in (str(tmp_path / "nope.json"), "plans/nope.json", "nope.json", "../a/b"):
        with pytest.raises(PlanError, match="no such file, and not a Hugging Face Hub repo id"):
            load_plan(missing)
    with pytest.raises(PlanError, match=r"cannot read it|no such file"):
        load_plan(tmp_path / "nope.json")  # a Path is never a repo id


# ------------------------------------------------------------------------------ the Hub (mocked)
def test_a_repo_id_loads_through_hf_hub_download(monkeypatch, saved, plan):
    import huggingface_hub

    calls = []

    def download(repo_id, filename, *, revision=None, **kwargs):
        calls.append((repo_id, filename, revision))
        return str(saved)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert_same_plan(load_plan("someone/wan-plans"), plan)
    assert_same_plan(load_plan("someone/wan-plans", filename="wan14b.json", revision="v1"), plan)
    assert calls == [("someone/wan-plans", "plan.json", None), ("someone/wan-plans", "wan14b.json", "v1")]


def _raises(error):
    def download(*args, **kwargs):
        raise error

    return download


def _http_error(name: str):
    """A huggingface_hub HTTP error without a response (their constructors want one)."""
    from huggingface_hub import errors

    cls = getattr(errors, name)
    error = cls.__new__(cls)
    error.args = ("failed",)
    return error


@pytest.mark.parametrize(
    "make_error, message",
    [
        (lambda: __import__("huggingface_hub").errors.LocalEntryNotFoundError("offline"),
         r"the Hub cannot be reached \(offline\?\) and the file is not in the local cache: connect once"),
        (lambda: _http_error("RepositoryNotFoundError"), r"no such Hub repo \(or it is private\): check the repo id"),
        (lambda: _http_error("GatedRepoError"), r"the Hub repo is gated"),
        (lambda: _http_error("RevisionNotFoundError"), r"has no revision 'v9'"),
        (lambda: __import__("huggingface_hub").errors.EntryNotFoundError("no file"), r"has no file 'plan.json': pass filename="),
    ],
)
def test_hub_failures_say_what_to_do(monkeypatch, make_error, message):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raises(make_error()))
    with pytest.raises(PlanError, match=message) as info:
        load_plan("someone/wan-plans", revision="v9")
    assert str(info.value).startswith("someone/wan-plans/plan.json at revision 'v9': ")


def test_a_broken_download_is_validated_like_a_file(monkeypatch, tmp_path, plan):
    import huggingface_hub

    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(plan_to_dict(plan))[:100])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(cut))
    with pytest.raises(PlanError, match="truncated"):
        load_plan("someone/wan-plans")


# ------------------------------------------------------------------------------ sparse-vdit plan show
def test_plan_show_prints_the_header_and_a_line_per_layer(saved, capsys):
    assert main(["plan", "show", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "WanTransformer3DModel: 3 layers x 2 heads x 64" in out
    assert "searched at  3x6x5 video tokens (90 total), block 16, 3 steps (2 ranges)" in out
    assert "lambda 0.5, epsilon 1" in out and "consistency 93.0% (majority, 1 prompt, 2 seeds)" in out
    assert "steps 0-1 (2 steps): density" in out and "step 2 (1 step): density" in out
    assert "  layer 0  density 0.2" in out and "1 skip, 1 diagonal(1)" in out
    assert "  layer 1  dense          2 full" in out
    assert "1 multi_diagonal(1,all), 1 vertical_stripe([0,-1],2)" in out


@pytest.mark.parametrize("case", ["truncated", "unknown mode", "newer schema", "layer count"])
def test_plan_show_on_a_malformed_plan_is_one_error_line(case, plan, tmp_path, capsys):
    make_text, message = MALFORMED[case]
    path = tmp_path / "plan.json"
    path.write_text(make_text(copy.deepcopy(plan_to_dict(plan))))
    assert main(["plan", "show", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err


def test_plan_show_command_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"schema_version": 1, "model": ')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "sparse_vdit.cli", "plan", "show", str(path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "truncated" in result.stderr
