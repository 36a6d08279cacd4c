"""DeployedPolicy for a robot's own code outside this repository, without shadowing its packages.

This repository's top-level packages are named utils, env, models and datasets, names that a robot's code base (or
Hugging Face's `datasets`) often uses too. Putting the repository on sys.path would let whichever comes first win.
Put only this folder on the path instead:

    PYTHONPATH=/path/to/ACT_Implementation/deploy python my_robot.py
    # or, in my_robot.py:  sys.path.append("/path/to/ACT_Implementation/deploy")

    from act_deploy import DeployedPolicy, ObservationError
    policy = DeployedPolicy.from_checkpoint("/path/to/ckpts/<run>/best.pt")   # or an exported policy folder

Importing this module imports utils/deploy.py and what it needs with the repository first on the path, then gives
the names back: afterwards `import utils` (or `datasets`, `env`, `models`) finds your own package again, or none,
exactly as before, while the loaded deploy code keeps the modules it imported (it imports nothing later).
"""

import importlib
import sys
from pathlib import Path

REPOSITORY = str(Path(__file__).resolve().parents[1])
OUR_PACKAGES = ("utils", "env", "models", "datasets")


def _ours(module_name: str) -> bool:
    return module_name.split(".")[0] in OUR_PACKAGES


def _import_from_repository(module_name: str):
    """Import `module_name` from this repository; sys.modules and sys.path are left as they were found."""
    theirs = {name: sys.modules.pop(name) for name in list(sys.modules) if _ours(name)}
    sys.path.insert(0, REPOSITORY)
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(REPOSITORY)
        for name in [name for name in sys.modules if _ours(name)]:
            del sys.modules[name]  # the loaded modules live on in the references the deploy code holds
        sys.modules.update(theirs)


_deploy = _import_from_repository("utils.deploy")
DeployedPolicy, ObservationError = _deploy.DeployedPolicy, _deploy.ObservationError
