"""Our ``kernels`` namespace portion beside Hugging Face's ``kernels`` distribution, in a fresh venv.

Hugging Face's ``kernels`` (imported by transformers and by diffusers' ``*_hub`` attention backends)
is a regular package named ``kernels``; ours is a PEP 420 portion of the same name that ships only
modules theirs does not have (README, "Installing beside Hugging Face kernels"). These tests build
our wheel from a copy of this checkout, create one venv (torch==2.13.0 first, so pip never pulls a
CUDA build), install our wheel together with ``kernels==0.17.2`` and check in subprocesses that:

  (a) HF's API imports and ``kernels.__version__`` is HF's;
  (b) our modules import and a tiny ``block_sparse_attention`` runs on CPU (PyTorch fallback path);
  (c) a tiny diffusers ``WanTransformer3DModel`` and a tiny transformers encoder run a forward pass in
      a process that also uses both ``kernels`` APIs;
  (d) the install order does not matter;
  (e) uninstalling either distribution leaves the other importable;
  and that with our portion alone, transformers and diffusers do not take it for HF's ``kernels``,
  and the default (PEP 660) editable install of ours works beside HF's too.

The venv is shared by the whole module (it takes most of the time) and every test first puts it
in the install state it needs. The tests skip only when the package registry cannot be reached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"  # a local CPU build; anything unpinned pulls a multi-GB CUDA build
HF_KERNELS_VERSION = "0.17.2"
HF_KERNELS_PIN = f"kernels=={HF_KERNELS_VERSION}"
OUR_DIST = "sparse-vdit"
OUR_MODULES = ("attention", "block_layout", "reference", "torch_paths", "triton_block_sparse", "triton_block_mass")
REGISTRY_PROBE = "pip-install-test==0.5"  # 2 kB, on PyPI only (not in any local wheel mirror)
PIP_TIMEOUT_S = 900
CHECK_TIMEOUT_S = 300
# Not copied into the build tree: environments, build outputs, caches.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".whl", ".device_out", "*.pyc"
)


# --------------------------------------------------------------------------- subprocess helpers
def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what would leak the test session into the venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        # TRITON_INTERPRET is set by conftest; the venv checks must run the plain PyTorch fallback path.
        if k not in ("TRITON_INTERPRET", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    env.update(extra or {})
    return env


def _run(cmd: list[str], *, timeout: float, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _tail(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def _registry_unreachable(tmp: Path) -> str | None:
    """pip's error when a tiny package cannot be downloaded from the registry, else None."""
    probe = _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--timeout", "15", "--retries", "1",
         "-d", str(tmp / "probe"), REGISTRY_PROBE],
        timeout=120, cwd=tmp, env=_clean_env(),
    )  # fmt: skip
    return None if probe.returncode == 0 else _tail(probe.stdout + probe.stderr, 800)


class Venv:
    """A fresh venv with torch and both distributions' dependencies; installs and checks in subprocesses."""

    def __init__(self, root: Path):
        self.root = root
        self.dir = root / "venv"
        self.python = self.dir / "bin" / "python"
        self.src = root / "src"  # copy of this checkout: wheel and editable installs build from it
        self.wheels = root / "wheels"
        self.hf_home = root / "hf_home"
        self.timings: dict[str, float] = {}
        self.ours: str | None = None  # None, "wheel" or "editable"
        self.hf = False
        self.our_wheel: Path | None = None
        self.hf_wheel: Path | None = None

    # -- setup
    def _timed(self, label: str, cmd: list[str], timeout: float = PIP_TIMEOUT_S) -> str:
        t0 = time.perf_counter()
        proc = _run(cmd, timeout=timeout, cwd=self.root, env=self.env())
        self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - t0
        assert proc.returncode == 0, f"{label}: {' '.join(map(str, cmd))} failed:\n{_tail(proc.stdout + proc.stderr)}"
        return proc.stdout

    def env(self) -> dict[str, str]:
        return _clean_env(
            {
                "PATH": f"{self.dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "HF_HOME": str(self.hf_home),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )

    def pip(self, label: str, *args: str) -> str:
        return self._timed(label, [str(self.python), "-m", "pip", *args])

    def build(self) -> None:
        shutil.copytree(REPO_ROOT, self.src, ignore=COPY_IGNORE)
        self._timed("build our wheel", [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                        "-w", str(self.wheels), str(self.src)])  # fmt: skip
        self.our_wheel = next(self.wheels.glob("sparse_vdit-*.whl"))
        self._timed("download HF kernels", [sys.executable, "-m", "pip", "download", "--no-deps",
                                            "-d", str(self.wheels), HF_KERNELS_PIN])  # fmt: skip
        self.hf_wheel = next(self.wheels.glob("kernels-*.whl"))
        self._timed("create venv", [sys.executable, "-m", "venv", str(self.dir)])
        self.pip("install torch", "install", TORCH_PIN)
        # Together, dependencies resolved by pip (torch already satisfied).
        self.pip("install ours + HF kernels", "install", str(self.our_wheel), HF_KERNELS_PIN)
        self.ours, self.hf = "wheel", True

    # -- install states
    def uninstall(self, dist: str) -> None:
        self.pip(f"uninstall {dist}", "uninstall", "-y", dist)
        if dist == OUR_DIST:
            self.ours = None
        else:
            self.hf = False

    def install_ours(self, mode: str) -> None:
        if mode == "wheel":
            self.pip("install our wheel", "install", "--no-deps", str(self.our_wheel))
        else:  # setuptools' default (PEP 660) editable mode
            self.pip("install ours editable", "install", "--no-deps", "-e", str(self.src))
        self.ours = mode

    def install_hf(self) -> None:
        self.pip("install HF kernels", "install", "--no-deps", str(self.hf_wheel))
        self.hf = True

    def ensure(self, ours: str | None, hf: bool) -> None:
        """Put the venv in the install state (our install mode or None, HF kernels installed or not)."""
        if self.ours != ours:
            if self.ours is not None:
                self.uninstall(OUR_DIST)
            if ours is not None:
                self.install_ours(ours)
        if self.hf != hf:
            self.uninstall("kernels") if self.hf else self.install_hf()

    # -- checks
    def site_kernels(self) -> Path:
        return next(self.dir.glob("lib/python3*/site-packages")) / "kernels"

    def check(self, code: str, label: str = "check") -> dict:
        """Run ``code`` in the venv's python (isolated mode: no cwd or PYTHON* variables); return the
        JSON object it prints on its last line."""
        t0 = time.perf_counter()
        proc = _run([str(self.python), "-I", "-c", textwrap.dedent(code)], timeout=CHECK_TIMEOUT_S, cwd=self.root,
                    env=self.env())  # fmt: skip
        self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - t0
        assert proc.returncode == 0, (
            f"{label} failed with state ours={self.ours} hf_kernels={self.hf}:\n{_tail(proc.stdout + proc.stderr)}"
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("coexistence")
    why = _registry_unreachable(root)
    if why is not None:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"package registry unreachable (pip download {REGISTRY_PROBE} failed): {why}")
    v = Venv(root)
    t0 = time.perf_counter()
    try:
        v.build()
        v.timings["venv ready"] = time.perf_counter() - t0
        yield v
    finally:
        print("\ncoexistence timings (s): " + ", ".join(f"{k} {t:.1f}" for k, t in v.timings.items()))
        shutil.rmtree(root, ignore_errors=True)  # several GB: never leave it to pytest's basetemp


# --------------------------------------------------------------------------- check scripts
# Each prints one JSON object on its last line.
HF_API = """
    import importlib.metadata as md, json
    import kernels
    from kernels import get_kernel
    print(json.dumps({"version": kernels.__version__, "dist": md.version("kernels"), "file": kernels.__file__,
                      "get_kernel": callable(get_kernel)}))
"""

OURS_RUN = """
    import json, os, warnings
    import torch
    import kernels.attention
    from kernels.attention import block_sparse_attention
    from kernels.block_layout import BlockLayout
    assert not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ
    torch.manual_seed(0)
    B, H, S, D = 1, 2, 256, 16
    q, k, v = (torch.randn(B, H, S, D) for _ in range(3))
    layout = BlockLayout.from_mask_mod(lambda b, h, qi, ki: qi >= ki, None, None, S, S, block_size=128)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = block_sparse_attention(q, k, v, layout)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    print(json.dumps({"file": kernels.attention.__file__, "err": float((out - ref).abs().max()),
                      "warnings": [str(w.message) for w in caught]}))
"""

# diffusers + transformers models, then both kernels APIs, in one process.
MODELS = """
    import importlib, importlib.metadata as md, json, sys
    import torch
    import transformers
    from transformers import UMT5Config, UMT5EncoderModel
    from transformers.utils import import_utils as tiu
    from diffusers import WanTransformer3DModel
    from diffusers.utils import import_utils as diu

    torch.manual_seed(0)
    wan = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()
    enc = UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                                      relative_attention_num_buckets=8)).eval()
    with torch.no_grad():
        text = enc(input_ids=torch.randint(0, 64, (1, 8))).last_hidden_state
        out = wan(hidden_states=torch.randn(1, 4, 2, 8, 8), timestep=torch.tensor([500]),
                  encoder_hidden_states=text, return_dict=False)[0]
    res = {
        "out_shape": list(out.shape), "finite": bool(torch.isfinite(out).all()),
        "tf_probe": list(tiu._is_package_available("kernels", return_version=True)),
        "tf_available": tiu.is_kernels_available(),
        "tf_available_any_version": tiu.is_kernels_available("0.0.1", "9999"),
        "diffusers_available": diu.is_kernels_available(),
        "diffusers_version": diu._kernels_version,
    }
    try:
        from kernels import get_kernel
        res["hf_version"] = importlib.import_module("kernels").__version__
    except ImportError as e:
        res["hf_error"] = str(e)
    try:
        from kernels.block_layout import BlockLayout
        import kernels.attention
        res["ours"] = kernels.attention.__file__
    except ImportError as e:
        res["ours_error"] = str(e)
    print(json.dumps(res))
"""


def _assert_hf_api(v: Venv) -> None:
    r = v.check(HF_API, "check HF API")
    assert r["version"] == HF_KERNELS_VERSION == r["dist"], r
    assert r["get_kernel"] and r["file"] == str(v.site_kernels() / "__init__.py"), r


def _assert_ours_run(v: Venv, where: Path) -> None:
    r = v.check(OURS_RUN, "check ours")
    assert Path(r["file"]) == where / "attention.py", r
    assert r["err"] < 1e-5, r
    assert any("PyTorch fallback path" in w for w in r["warnings"]), r


def _assert_ours_missing(v: Venv) -> None:
    r = v.check(
        """
        import json
        try:
            import kernels.attention
            print(json.dumps({"imported": kernels.attention.__file__}))
        except ModuleNotFoundError as e:
            print(json.dumps({"error": str(e)}))
        """
    )
    assert r.get("error") == "No module named 'kernels.attention'", r


# --------------------------------------------------------------------------- tests
@pytest.mark.network
@pytest.mark.slow
def test_hf_kernels_api_still_works_beside_ours(venv):  # (a)
    venv.ensure("wheel", hf=True)
    _assert_hf_api(venv)
    # Both sets of files share one directory: HF's regular package with our modules in it.
    names = {p.name for p in venv.site_kernels().iterdir()}
    assert {"__init__.py", *(m + ".py" for m in OUR_MODULES)} <= names, sorted(names)


@pytest.mark.network
@pytest.mark.slow
def test_our_kernels_run_beside_hf(venv):  # (b)
    venv.ensure("wheel", hf=True)
    _assert_ours_run(venv, venv.site_kernels())


@pytest.mark.network
@pytest.mark.slow
def test_tiny_wan_and_transformers_run_beside_both(venv):  # (c)
    venv.ensure("wheel", hf=True)
    r = venv.check(MODELS, "check models")
    assert r["out_shape"] == [1, 4, 2, 8, 8] and r["finite"], r
    assert r.get("hf_version") == HF_KERNELS_VERSION and "ours" in r, r
    # Both libraries see HF's distribution, not ours (which also maps to top-level `kernels`).
    assert r["tf_probe"] == [True, HF_KERNELS_VERSION], r
    assert r["diffusers_available"] and r["diffusers_version"] == HF_KERNELS_VERSION, r


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("first", ["hf-first", "ours-first"])
def test_install_order_does_not_matter(venv, first):  # (d)
    venv.ensure(None, hf=False)
    assert not venv.site_kernels().joinpath("__init__.py").exists()
    steps = [venv.install_hf, lambda: venv.install_ours("wheel")]
    for step in steps if first == "hf-first" else steps[::-1]:
        step()
    _assert_hf_api(venv)
    _assert_ours_run(venv, venv.site_kernels())


@pytest.mark.network
@pytest.mark.slow
def test_uninstalling_one_leaves_the_other(venv):  # (e)
    venv.ensure("wheel", hf=True)
    venv.uninstall(OUR_DIST)
    _assert_hf_api(venv)
    _assert_ours_missing(venv)
    venv.install_ours("wheel")
    venv.uninstall("kernels")
    _assert_ours_run(venv, venv.site_kernels())
    assert not venv.site_kernels().joinpath("__init__.py").exists()
    r = venv.check(MODELS, "check models")
    assert "cannot import name 'get_kernel' from 'kernels'" in r.get("hf_error", ""), r


@pytest.mark.network
@pytest.mark.slow
def test_our_portion_alone_does_not_enable_hf_kernels_paths(venv):
    """With only our wheel, transformers and diffusers keep every HF-kernels code path off."""
    venv.ensure("wheel", hf=False)
    r = venv.check(MODELS, "check models")
    assert r["out_shape"] == [1, 4, 2, 8, 8] and r["finite"], r
    assert r["diffusers_available"] is False, r
    # transformers gates on 0.18.2 <= version < 0.19 (5.24); our portion must never pass that gate,
    # or transformers would `from kernels import ...` names that only HF's package has.
    assert r["tf_available"] is False, r


@pytest.mark.network
@pytest.mark.slow
def test_transformers_does_not_read_our_version_as_hf_kernels(venv):
    """setup.py leaves `kernels` out of top_level.txt, so importlib.metadata's
    packages_distributions() (used by transformers) never maps HF's name to our distribution."""
    venv.ensure("wheel", hf=False)
    r = venv.check(MODELS, "check models")
    available, version = r["tf_probe"]
    assert not (available and version != "N/A"), f"transformers sees `kernels` {version} (ours): {r}"
    assert r["tf_available_any_version"] is not True, r


@pytest.mark.network
@pytest.mark.slow
def test_editable_install_beside_hf(venv):
    """setuptools' default editable mode: its import hook finds our modules after HF's package
    (kernels.__path__ is HF's directory only). editable_mode=compat or strict does not (README)."""
    venv.ensure("editable", hf=True)
    _assert_hf_api(venv)
    _assert_ours_run(venv, venv.src / "kernels")
    venv.ensure("editable", hf=False)
    r = venv.check(MODELS, "check models")
    assert r["out_shape"] == [1, 4, 2, 8, 8] and r["finite"], r
    assert r["diffusers_available"] is False and r["tf_available"] is False, r
    assert r["ours"] == str(venv.src / "kernels" / "attention.py"), r
