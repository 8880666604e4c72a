"""Build hook only; all metadata lives in pyproject.toml.

``kernels`` is Hugging Face's distribution name; ours is only a PEP 420 portion of that package.
Leaving it out of ``top_level.txt`` keeps ``importlib.metadata.packages_distributions()`` (which
transformers uses to find the version of "kernels") from reporting sparse-vdit's version as HF
kernels' version. tests/test_coexistence.py checks both installs side by side.
"""

import os

from setuptools import setup
from setuptools.command.egg_info import egg_info


class EggInfoWithoutKernelsTopLevel(egg_info):
    def run(self):
        super().run()
        path = os.path.join(self.egg_info, "top_level.txt")
        with open(path) as f:
            names = [name for name in f.read().split() if name != "kernels"]
        with open(path, "w") as f:
            f.write("".join(name + "\n" for name in names))


setup(cmdclass={"egg_info": EggInfoWithoutKernelsTopLevel})
