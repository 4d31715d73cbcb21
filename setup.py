"""Setuptools entry point; metadata lives in setup.cfg.

The model configs live in configs/ at the repository root (one file per
registered model); they are installed inside the package as zoo/configs.
"""
import setuptools
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
  """Copies configs/*.toml into the built package as zoo/configs/."""

  def run(self):
    super().run()
    import pathlib
    import shutil
    target = pathlib.Path(self.build_lib) / "zoo" / "configs"
    target.mkdir(parents=True, exist_ok=True)
    for path in pathlib.Path("configs").glob("*.toml"):
      shutil.copy2(path, target / path.name)


setuptools.setup(cmdclass={"build_py": BuildWithConfigs})
