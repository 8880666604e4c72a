"""Plan files: ``save_plan`` writes a ``Plan`` as JSON, ``load_plan`` reads one from a path or the Hub.

Format (schema 1), one JSON object:

    schema_version       1
    sparse_vdit_version  the version that wrote it
    created              ISO date and time
    model                ModelInfo fields (family, num_layers, num_heads, head_dim, layer_names,
                         text_position, patch_size, config_fingerprint)
    model_config         the transformer config it was searched on (private keys dropped)
    token_layout         {frames, rows, cols, text_len, text_position} it was searched at, and
                         prefix_len / suffix_len when the layout has conditioning tokens off its grid
    num_steps, block_size, lambda, epsilon
    modes                the table of distinct modes, e.g. {"mode": "diagonal", "rows": 4}
    steps                [{"start": 0, "end": 10, "layers": [[mode index per head] per layer]}, ...]
    cost                 {"source", "gpu", "shape", "costs": [[mode index, cost], ...]}
    expected_density, predicted_speedup, calibration

Modes are stored once and referred to by index; identical consecutive steps are one range. Every
problem found while reading raises ``PlanError`` naming the file, what is wrong and what to do.

Reading trusts nothing in the file: a key twice in one object is refused (JSON readers disagree on
which one counts), as are nesting too deep and numbers too long to read; the expected density and
predicted speedup are recomputed from the modes and costs (the file's own numbers are not shown);
only a regular file of at most ``MAX_PLAN_BYTES`` is read (a FIFO would block, ``/dev/zero`` never
ends), and a broken symbolic link is named as one, not taken for a Hub repo id.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable

from sparse_vdit.modes import MODE_BY_NAME, Mode, mode_from_dict, mode_to_dict
from sparse_vdit.plan_core import REMAKE, SCHEMA_VERSION, CostTable, Plan, PlanError, StepRange
from sparse_vdit.protocol import ModelInfo
from sparse_vdit.token_layout import TokenLayout

__all__ = ["save_plan", "load_plan", "plan_to_dict", "plan_from_dict", "plan_to_json", "plan_from_json", "looks_like_plan"]

DEFAULT_FILENAME = "plan.json"
MAX_PLAN_BYTES = 64 * 2**20  # a 50-step, 40-layer, 40-head plan whose every step differs takes 300 KB
LINE_WIDTH = 100  # a container this short is written on one line
_MODEL_KEYS = ("family", "num_layers", "num_heads", "head_dim", "layer_names", "text_position", "patch_size", "config_fingerprint")
_LAYOUT_KEYS = ("frames", "rows", "cols", "text_len", "text_position")
_LAYOUT_OPTIONAL_KEYS = ("prefix_len", "suffix_len")  # written only when nonzero
_TOP_KEYS = (
    "schema_version", "sparse_vdit_version", "created", "model", "model_config", "token_layout", "num_steps",
    "block_size", "lambda", "epsilon", "modes", "steps", "cost", "expected_density", "predicted_speedup", "calibration",
)
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_hub_repo_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hugging Face Hub repo id ("namespace/name", no "..")."""
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text


# ------------------------------------------------------------------------------ writing
def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as the JSON object of a plan file."""
    from sparse_vdit import __version__

    table = list(dict.fromkeys([mode for mode, _ in plan.cost.costs] + list(plan.distinct_modes())))
    index = {mode: i for i, mode in enumerate(table)}
    model = {key: getattr(plan.model, key) for key in _MODEL_KEYS}
    model.update(layer_names=list(plan.model.layer_names), patch_size=list(plan.model.patch_size))
    return {
        "schema_version": SCHEMA_VERSION,
        "sparse_vdit_version": __version__,
        "created": plan.created,
        "model": model,
        "model_config": plan.model_config,
        "token_layout": {
            **{key: getattr(plan.token_layout, key) for key in _LAYOUT_KEYS},
            **{key: n for key in _LAYOUT_OPTIONAL_KEYS if (n := getattr(plan.token_layout, key))},
        },
        "num_steps": plan.num_steps,
        "block_size": plan.block_size,
        "lambda": plan.lam,
        "epsilon": plan.epsilon,
        "modes": [mode_to_dict(mode) for mode in table],
        "steps": [
            {"start": r.start, "end": r.end, "layers": [[index[m] for m in layer] for layer in r.layers]}
            for r in plan.steps
        ],
        "cost": {
            "source": plan.cost.source,
            "gpu": plan.cost.gpu,
            "shape": plan.cost.shape,
            "costs": [[index[mode], cost] for mode, cost in plan.cost.costs],
        },
        "expected_density": plan.expected_density,
        "predicted_speedup": plan.predicted_speedup,
        "calibration": plan.calibration,
    }


def _format(value: Any, indent: str = "") -> str:
    """JSON with a container on one line when it fits ``LINE_WIDTH`` or holds no containers (a
    layer's mode indices, a mode, a cost pair), else one child per line: readable and small (a
    50-step 40-layer plan is a line per (step range, layer))."""
    flat = json.dumps(value, allow_nan=False)
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    if len(indent) + len(flat) <= LINE_WIDTH or not any(isinstance(c, (dict, list)) and c for c in children):
        return flat
    inner = indent + " "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {_format(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + _format(v, inner) for v in value) + "\n" + indent + "]"


def plan_to_json(plan: Plan) -> str:
    return _format(plan_to_dict(plan)) + "\n"


def save_plan(plan: Plan, path: str | os.PathLike) -> Path:
    """Write ``plan`` as JSON to ``path`` (a folder: ``path/plan.json``); returns the file's path.

    The file is written next to its destination and moved into place, so a reader never sees half a plan.
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"save_plan writes a sparse_vdit.plan.Plan, got {type(plan).__name__}")
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / DEFAULT_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(plan_to_json(plan), encoding="utf-8")
    os.replace(partial, path)
    return path


# ------------------------------------------------------------------------------ reading
def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# name -> (test, what the value must be)
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_integer, "an integer"),
    "number": (_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "object": (lambda v: isinstance(v, dict), "an object"),
}


def _section(value: Any, where: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """``value`` as a JSON object holding exactly ``keys``, and any of ``optional``."""
    if not isinstance(value, dict):
        raise PlanError(f"{where} must be a JSON object, got {_short(value)}: {REMAKE}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise PlanError(f"{where} lacks {', '.join(map(repr, missing))}: the file is incomplete; {REMAKE}")
    unknown = sorted(set(value) - set(keys) - set(optional))
    if unknown:
        raise PlanError(
            f"{where} has unknown field(s) {', '.join(map(repr, unknown))} (it holds {', '.join(keys)}): "
            f"{REMAKE}, or upgrade sparse-vdit if a newer version wrote it"
        )
    return value


def _take(obj: dict, key: str, kind: str, where: str, *, nullable: bool = False) -> Any:
    value = obj[key]
    if value is None and nullable:
        return None
    test, what = _KINDS[kind]
    if not test(value):
        raise PlanError(f"{where}.{key} must be {what}{' or null' if nullable else ''}, got {_short(value)}; {REMAKE}")
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mode_list(indices: Any, table: list[Mode], where: str) -> tuple[Mode, ...]:
    if not isinstance(indices, list):
        raise PlanError(f"{where} must be a list of mode indices, got {_short(indices)}; {REMAKE}")
    for i, x in enumerate(indices):
        if not _integer(x):
            raise PlanError(f"{where}[{i}] must be a mode index (an integer), got {_short(x)}; {REMAKE}")
        if not 0 <= x < len(table):
            raise PlanError(
                f"{where}[{i}]: mode index {x} is out of range: the modes table has {len(table)} entries "
                f"(0..{len(table) - 1}); {REMAKE}"
            )
    return tuple(table[x] for x in indices)


def _read_modes(value: Any) -> list[Mode]:
    if not isinstance(value, list) or not value:
        raise PlanError(f"modes must be a non-empty list of modes, got {_short(value)}; {REMAKE}")
    table = []
    for i, entry in enumerate(value):
        try:
            table.append(mode_from_dict(entry))
        except ValueError as exc:
            upgrade = ""
            if isinstance(entry, dict) and entry.get("mode") not in MODE_BY_NAME:
                upgrade = "; a plan written by a newer sparse-vdit may use modes this one lacks: upgrade sparse-vdit"
            raise PlanError(f"modes[{i}]: {exc}{upgrade}") from None
    return table


def _read_model(value: Any) -> ModelInfo:
    model = _section(value, "model", _MODEL_KEYS)
    for key in ("family", "text_position", "config_fingerprint"):
        _take(model, key, "str", "model")
    for key in ("num_layers", "num_heads", "head_dim"):
        _take(model, key, "int", "model")
    names = _take(model, "layer_names", "list", "model")
    if not all(isinstance(n, str) for n in names):
        raise PlanError(f"model.layer_names must be a list of module paths (strings); {REMAKE}")
    patch = _take(model, "patch_size", "list", "model")
    if len(patch) != 3 or not all(_integer(p) for p in patch):
        raise PlanError(f"model.patch_size must be 3 integers (t, h, w), got {_short(patch)}; {REMAKE}")
    return ModelInfo(**{**model, "layer_names": tuple(names), "patch_size": tuple(patch)})


def _read_layout(value: Any) -> TokenLayout:
    layout = _section(value, "token_layout", _LAYOUT_KEYS, _LAYOUT_OPTIONAL_KEYS)
    for key in layout:
        _take(layout, key, "str" if key == "text_position" else "int", "token_layout")
    try:
        return TokenLayout(**layout)
    except ValueError as exc:
        raise PlanError(f"token_layout: {exc}; {REMAKE}") from None


def _read_steps(value: Any, table: list[Mode]) -> tuple[StepRange, ...]:
    if not isinstance(value, list) or not value:
        raise PlanError(f"steps must be a non-empty list of step ranges, got {_short(value)}; {REMAKE}")
    ranges = []
    for i, entry in enumerate(value):
        where = f"steps[{i}]"
        entry = _section(entry, where, ("start", "end", "layers"))
        start, end = _take(entry, "start", "int", where), _take(entry, "end", "int", where)
        layers = _take(entry, "layers", "list", where)
        modes = tuple(_mode_list(layer, table, f"{where}.layers[{l}]") for l, layer in enumerate(layers))
        ranges.append(StepRange(start, end, modes))
    return tuple(ranges)


def _read_cost(value: Any, table: list[Mode]) -> CostTable:
    cost = _section(value, "cost", ("source", "gpu", "shape", "costs"))
    pairs = []
    for i, pair in enumerate(_take(cost, "costs", "list", "cost")):
        if not (isinstance(pair, list) and len(pair) == 2 and _number(pair[1])):
            raise PlanError(f"cost.costs[{i}] must be a [mode index, cost] pair, got {_short(pair)}; {REMAKE}")
        pairs.append((_mode_list(pair[:1], table, f"cost.costs[{i}]")[0], pair[1]))
    return CostTable(
        source=_take(cost, "source", "str", "cost"),
        gpu=_take(cost, "gpu", "str", "cost", nullable=True),
        shape=_take(cost, "shape", "str", "cost"),
        costs=tuple(pairs),
    )


def _check_schema(data: Any) -> None:
    if not isinstance(data, dict) or "schema_version" not in data:
        raise PlanError("not a sparse-vdit plan (a JSON object with a schema_version): pass a file written by save_plan")
    version = data["schema_version"]
    if isinstance(version, str) and version.strip().isdigit():
        raise PlanError(
            f'schema_version must be the integer {int(version)}, not the string "{version}": write it without '
            f"quotes, or {REMAKE}"
        )
    if _integer(version) and version > SCHEMA_VERSION:
        raise PlanError(
            f"schema version {version} is newer than this sparse-vdit reads ({SCHEMA_VERSION}; the file was written "
            f"by sparse-vdit {data.get('sparse_vdit_version', '?')}): upgrade sparse-vdit (pip install -U sparse-vdit)"
        )
    if version != SCHEMA_VERSION or not _integer(version):
        raise PlanError(f"unknown schema version {_short(version)}: this sparse-vdit reads schema {SCHEMA_VERSION}; {REMAKE}")


def plan_from_dict(data: Any) -> Plan:
    """The ``Plan`` a plan file's JSON object describes; ``PlanError`` for anything malformed."""
    _check_schema(data)
    top = _section(data, "the plan", _TOP_KEYS)
    for key in ("sparse_vdit_version", "created"):
        _take(top, key, "str", "plan")
    model_config = _take(top, "model_config", "object", "plan")
    table = _read_modes(top["modes"])
    for key in ("expected_density", "predicted_speedup"):  # recomputed below: only their type is read
        _take(top, key, "number", "plan")
    plan = Plan(
        model=_read_model(top["model"]),
        model_config=model_config,
        token_layout=_read_layout(top["token_layout"]),
        num_steps=_take(top, "num_steps", "int", "plan"),
        block_size=_take(top, "block_size", "int", "plan"),
        steps=_read_steps(top["steps"], table),
        lam=_take(top, "lambda", "number", "plan"),
        epsilon=_take(top, "epsilon", "number", "plan"),
        cost=_read_cost(top["cost"], table),
        expected_density=0.0,
        predicted_speedup=1.0,
        calibration=_take(top, "calibration", "object", "plan", nullable=True),
        created=top["created"],
    )
    # What the modes and costs give, not what the file says (an edited or hand-made file could
    # claim any density; an all-Skip plan computes nothing and is refused here).
    return dataclasses.replace(plan, expected_density=plan.computed_density(), predicted_speedup=plan.computed_speedup())


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object's pairs as a dict; ``PlanError`` for a key given twice."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise PlanError(
                f"the key {key!r} appears twice in one object: which one counts is ambiguous (JSON readers "
                f"disagree); remove one, or {REMAKE}"
            )
        out[key] = value
    return out


def plan_from_json(text: str) -> Plan:
    """The ``Plan`` in a plan file's text; ``PlanError`` says whether it is empty, cut off, not JSON
    or malformed."""
    if not text.strip():
        raise PlanError("the file is empty: save the plan again with save_plan, or download it again")
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
        return plan_from_dict(data)
    except RecursionError:
        raise PlanError(f"nested too deeply to be a plan (lists or objects inside thousands of others): {REMAKE}") from None
    except json.JSONDecodeError as exc:
        # Reading ran into the end of the text (an unterminated string runs to the end, too).
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise PlanError(
                f"the file is truncated (its JSON ends early, at line {exc.lineno}): it was cut off while being "
                "written or downloaded; save or download it again"
            ) from None
        raise PlanError(f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): pass a plan file written by save_plan") from None
    except ValueError as exc:
        if isinstance(exc, PlanError):
            raise
        digits = re.search(r"value has (\d+) digits", str(exc))  # Python's limit on int(str) (4300 digits)
        if digits is None:
            raise
        raise PlanError(f"a number too long to read ({digits.group(1)} digits): {REMAKE}") from None


def load_plan(
    path_or_repo_id: str | os.PathLike, *, filename: str = DEFAULT_FILENAME, revision: str | None = None
) -> Plan:
    """Read and validate a plan: a file, a folder holding ``filename``, or a Hugging Face Hub repo id.

    A string that is not an existing path and has the form "namespace/name" is a Hub model repo:
    its ``filename`` at ``revision`` is fetched with ``huggingface_hub.hf_hub_download``, which
    serves the local cache when offline. Raises ``PlanError`` saying what is wrong and what to do.
    """
    path = _resolve(path_or_repo_id, filename, revision)
    try:
        text = _read_regular_file(path).decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not a plan file (not UTF-8 text): pass the plan's JSON file") from None
    except OSError as exc:
        raise PlanError(f"{path}: cannot read it ({exc.strerror or exc}): check the path and its permissions") from None
    try:
        return plan_from_json(text)
    except PlanError as exc:
        raise PlanError(f"{path}: {exc}") from None


def looks_like_plan(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file ``save_plan`` could have written (a JSON object with a schema
    version and steps): what a command may overwrite without being told to."""
    try:
        data = json.loads(_read_regular_file(Path(path)))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "steps" in data


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``MAX_PLAN_BYTES`` (checked before
    opening it: a FIFO would block the open, a device never ends); ``OSError`` as reading raises it."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise PlanError(f"{path}: not a regular file (a FIFO, a device or a socket): pass the plan's JSON file")
    if info.st_size > MAX_PLAN_BYTES:
        raise PlanError(
            f"{path}: {info.st_size / 2**20:.1f} MiB, far more than any plan (at most {MAX_PLAN_BYTES // 2**20} "
            "MiB): pass the plan's JSON file"
        )
    with open(path, "rb") as f:
        return f.read(MAX_PLAN_BYTES + 1)


def _resolve(path_or_repo_id: str | os.PathLike, filename: str, revision: str | None) -> Path:
    """The local file a ``load_plan`` argument names (downloaded first for a Hub repo id)."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_symlink() and not path.exists():
        raise PlanError(
            f"{path} is a symbolic link to {os.readlink(path)}, which does not exist: fix the link, or pass the plan file"
        )
    if path.is_dir():
        if not (path / filename).is_file():
            raise PlanError(f"{path} is a folder without {filename}: pass the plan file itself, or filename= naming it")
        return path / filename
    if path.exists() or isinstance(path_or_repo_id, os.PathLike):
        return path
    repo_id = str(path_or_repo_id)
    if not is_hub_repo_id(repo_id) or repo_id.endswith(".json"):
        raise PlanError(
            f"{repo_id}: no such file, and not a Hugging Face Hub repo id (namespace/name): check the path"
        )
    return Path(_download(repo_id, filename, revision))


def _download(repo_id: str, filename: str, revision: str | None) -> str:
    """``hf_hub_download`` with its failures turned into PlanErrors that say what to do."""
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise PlanError(
            f"{repo_id} is not a local file, and loading plans from the Hub needs huggingface_hub: "
            "pip install huggingface_hub (or pass a local path)"
        ) from None
    where = f"{repo_id}/{filename}" + (f" at revision {revision!r}" if revision else "")
    # Most specific first: GatedRepoError is a RepositoryNotFoundError, LocalEntryNotFoundError an EntryNotFoundError.
    advice = (
        (errors.GatedRepoError, "the Hub repo is gated: accept its terms on the Hub and log in (hf auth login)"),
        (errors.RepositoryNotFoundError, "no such Hub repo (or it is private): check the repo id, log in (hf auth "
                                         "login) for a private one, or pass a local path"),
        (errors.RevisionNotFoundError, f"the Hub repo has no revision {revision!r}: check the branch, tag or commit"),
        (errors.LocalEntryNotFoundError, "the Hub cannot be reached (offline?) and the file is not in the local "
                                         "cache: connect once to download it (it is then cached for offline use), "
                                         "or pass a local path"),
        (errors.EntryNotFoundError, f"the Hub repo has no file {filename!r}: pass filename= naming the plan in it"),
    )
    try:
        return huggingface_hub.hf_hub_download(repo_id, filename, revision=revision)
    except (errors.HfHubHTTPError, errors.EntryNotFoundError, OSError, ValueError) as exc:
        what = next((text for cls, text in advice if isinstance(exc, cls)), None)
        raise PlanError(f"{where}: " + (what or f"could not fetch it from the Hub ({exc}): try again, or pass a local path")) from None
