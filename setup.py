"""Packaging layout (metadata, dependencies and scripts are in pyproject.toml): the repository's
top-level folders models/, optim/, metrics/, sweep/ and conf/ install as subpackages of one project
namespace, ``specsweep``, so nothing generic lands at the top of site-packages. hydra_plugins/ keeps
its name: Hydra discovers plugins in that shared namespace package (ours are specsweep_*)."""

from setuptools import find_namespace_packages, setup

ROOTS = ("models", "optim", "metrics", "sweep", "conf")
# conf/local/ holds one site's settings (git-ignored) and stays out of the wheel.
EXCLUDE = ["conf.local", "conf.local.*", "*.__pycache__", "*.__pycache__.*"]

found = find_namespace_packages(include=[p for r in ROOTS for p in (r, f"{r}.*")], exclude=EXCLUDE)
setup(
    packages=["specsweep", *(f"specsweep.{name}" for name in found),
              *find_namespace_packages(include=["hydra_plugins", "hydra_plugins.*"], exclude=EXCLUDE)],
    package_dir={"specsweep": "specsweep", **{f"specsweep.{root}": root for root in ROOTS}},
)
