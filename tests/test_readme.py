"""Every Python block of README.md is self-contained, and the ones that say so run on the proxy.

Each ```python block is preceded by a marker line:
    <!-- readme-test: proxy -->   runs here, on the shipped proxy model on the CPU (executed)
    <!-- readme-test: gpu -->     needs a GPU or a Hub download: compiled, and every name it uses
                                  must be defined or imported in the block itself
Every block is checked for names it uses without defining them (the undefined ``pipe`` a user
pasting one block would hit). The public face: every name ``sparse_vdit.__all__`` lists imports.
"""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"<!-- readme-test: (proxy|gpu) -->")
KINDS = ("proxy", "gpu")


def python_blocks() -> list[tuple[int, str, str]]:
    """(line, kind or '', code) of every ```python block, kind from the marker line just above it."""
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            match = MARKER.fullmatch(above.strip())
            blocks.append((start + 1, match.group(1) if match else "", "\n".join(lines[start:end])))
            i = end
        i += 1
    return blocks


def undefined_names(code: str) -> set[str]:
    """Names the code loads but never binds (imports, assignments, defs, arguments, loop targets)."""
    tree = ast.parse(code)
    bound, loaded = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loaded - bound


BLOCKS = python_blocks()
IDS = [f"line{line}-{kind or 'unmarked'}" for line, kind, _ in BLOCKS]


def test_readme_has_blocks_of_both_kinds():
    kinds = [kind for _, kind, _ in BLOCKS]
    assert kinds.count("proxy") >= 5 and "gpu" in kinds


@pytest.mark.parametrize("line, kind, code", BLOCKS, ids=IDS)
def test_block_is_marked_and_self_contained(line, kind, code):
    assert kind in KINDS, f"README.md line {line}: put <!-- readme-test: proxy --> or <!-- readme-test: gpu --> above it"
    compile(code, f"README.md:{line}", "exec")
    missing = undefined_names(code)
    assert not missing, f"README.md line {line} uses {sorted(missing)} without defining or importing them"


def test_undefined_names_are_found():
    assert undefined_names("video = pipe(prompt)") == {"pipe", "prompt"}
    assert undefined_names("import torch\nx = [i for i in range(3)]\ndef f(a):\n    return a + x[0]\n") == set()


@pytest.mark.slow
@pytest.mark.parametrize("line, kind, code", [b for b in BLOCKS if b[1] == "proxy"],
                         ids=[i for i, b in zip(IDS, BLOCKS) if b[1] == "proxy"])
def test_proxy_block_runs(line, kind, code, fallback, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks write plans, reports and videos where they run
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


OLD_NAMES = {"AdaSpaConfig": "AdaSpaAttention"}  # old public name -> the object's name now


def test_public_face():
    import sparse_vdit

    for name in sparse_vdit.__all__:
        obj = getattr(sparse_vdit, name)
        if name == "__version__":
            assert isinstance(obj, str) and obj.count(".") >= 2, obj
            continue
        # The name resolves to the object of that name (or the one it is the old name of) in one
        # of the project's packages.
        assert obj.__name__ == OLD_NAMES.get(name, name), f"sparse_vdit.{name} is {obj!r}"
        assert obj.__module__.split(".")[0] in ("sparse_vdit", "adaspa", "kernels", "search", "pipelines"), obj
    from adaspa import AdaSpaConfig
    from pipelines import apply_sparse_attention
    from search import search_plan

    assert sparse_vdit.apply_sparse_attention is apply_sparse_attention
    assert sparse_vdit.AdaSpaConfig is AdaSpaConfig and sparse_vdit.search_plan is search_plan
    assert {"apply_sparse_attention", "load_plan", "AdaSpaConfig", "search_plan", "evaluate"} <= set(dir(sparse_vdit))
    with pytest.raises(AttributeError, match="no_such_name"):
        sparse_vdit.no_such_name


# ------------------------------------------------------------------ the stated defaults
def stated_defaults() -> dict[tuple[str, str], str]:
    """{(command, option): default} from the table after ``<!-- readme-test: defaults -->``."""
    lines = README.read_text().splitlines()
    start = lines.index("<!-- readme-test: defaults -->")
    out = {}
    for line in lines[start + 3:]:
        if not line.startswith("|"):
            break
        command, option, default = (cell.strip().strip("`") for cell in line.strip("|").split("|"))
        out[(command, option)] = default
    return out


def parser_defaults() -> dict[tuple[str, str], str]:
    """{(command, option): default as the README writes it} of every option with a fixed default."""
    import argparse

    from sparse_vdit.cli import _build_parser

    def subcommands(parser, path=()):
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if action is None:
            yield " ".join(path), parser
            return
        for name, sub in action.choices.items():
            yield from subcommands(sub, (*path, name))

    out = {}
    for command, parser in subcommands(_build_parser()):
        for action in parser._actions:
            unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
            if not action.option_strings or unset or action.dest == "help":
                continue
            default = action.default
            out[(command, action.option_strings[0])] = ",".join(map(str, default)) if isinstance(default, list) else str(default)
    return out


def test_the_readme_states_every_fixed_default_as_the_parsers_have_it():
    stated, actual = stated_defaults(), parser_defaults()
    assert stated == actual, {key: (stated.get(key), actual.get(key)) for key in stated.keys() | actual.keys()
                              if stated.get(key) != actual.get(key)}


def test_the_readme_states_the_model_dependent_epsilons_as_the_commands_resolve_them():
    """search --epsilon and eval --epsilons default to the model's (GenerationDefaults), not the parser's."""
    import argparse

    from pipelines.loading import PROXY_CPU_DEFAULTS, PROXY_DEFAULTS
    from search.defaults import DEFAULT_EPSILON
    from sparse_vdit.cli.eval_command import method_settings
    from sparse_vdit.cli.evaluation.methods import registry

    plan = registry()["plan"]
    unset = argparse.Namespace(epsilons=None)
    general = method_settings(unset, plan, PROXY_DEFAULTS)
    proxy_cpu = method_settings(unset, plan, PROXY_CPU_DEFAULTS)
    assert general == list(plan.defaults) and proxy_cpu != general
    assert method_settings(argparse.Namespace(epsilons=[0.4]), plan, PROXY_CPU_DEFAULTS) == [0.4]
    joined = lambda values: ",".join(f"{v:g}" for v in values)
    stated = (f"`search --epsilon` {DEFAULT_EPSILON:g} and `eval --epsilons` {joined(general)},\n"
              f"except for the proxy on the CPU, where they are {PROXY_CPU_DEFAULTS.search_epsilon:g} and {joined(proxy_cpu)} ")
    assert stated in README.read_text()
    assert PROXY_DEFAULTS.search_epsilon is None  # the GPU proxy and other models: the search's own default


def test_the_repository_stands_alone():
    """No file of the repository cites documents kept outside it."""
    root = README.parent
    cited = re.compile(r"shared/docs|\.\./shared|/work/shared|(?<![\w/])(?:baselines|architecture|style|diffusers-notes|methods|proxy)\.md\b")
    found = []
    for path in root.rglob("*"):
        if path.suffix not in (".py", ".md", ".toml", ".cfg", ".ipynb") or any(p in path.parts for p in (".venv", ".git")):
            continue
        if path.name == "RESULTS.md":  # a log of past runs, quoted as they were
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if cited.search(line) and "cited = re.compile" not in line:
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found)
