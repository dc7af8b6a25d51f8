"""The MONAI Deploy App SDK, imported in the order and at the cost this app needs.

* torch first: holoscan (under ``monai.deploy``) needs libcudart, which the CUDA build of torch loads; importing
  holoscan first fails on machines without a system CUDA.
* Without MONAI core's eager start-up: ``import monai.deploy`` first runs MONAI core's ``monai/__init__.py``, which
  imports every MONAI submodule (≈ 490 modules, ≈ 3 s of a 2-core cold start) although the app uses none of them.
  The SDK is imported here under a bare ``monai`` package (its path, no code run); the bare package is then
  dropped, so MONAI core, if anything imports it later (the UNet baseline, metrics), loads whole, in its own
  order, with ``monai.deploy`` bound to it. Where MONAI core is already imported this changes nothing.

Import this module before any ``monai.deploy`` import (``app.py`` and ``operators`` do).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

import torch  # noqa: F401  (import-order side effect, see above)


class _BindSdkToMonai(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """When MONAI core is imported after the SDK: run its ``__init__`` with ``monai.deploy`` already bound."""

    def __init__(self) -> None:
        self.loader: importlib.abc.Loader | None = None

    def find_spec(self, name: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if name != "monai":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec) if self.loader else None

    def exec_module(self, module: ModuleType) -> None:
        module.deploy = sys.modules["monai.deploy"]  # type: ignore[attr-defined]
        assert self.loader is not None
        self.loader.exec_module(module)


def _import_sdk_without_monai_core() -> None:
    if "monai" in sys.modules:
        import monai.deploy.core  # noqa: F401
        return
    spec = importlib.util.find_spec("monai")
    if spec is None:
        raise ImportError("monai-deploy-app-sdk is not installed")
    sys.modules["monai"] = importlib.util.module_from_spec(spec)  # a bare package: path only, __init__ not run
    try:
        import monai.deploy.conditions  # noqa: F401
        import monai.deploy.core  # noqa: F401
    finally:
        del sys.modules["monai"]
    sys.meta_path.insert(0, _BindSdkToMonai())


_import_sdk_without_monai_core()

from monai.deploy.conditions import CountCondition  # noqa: E402
from monai.deploy.core import Application, Fragment, Operator, OperatorSpec, init_app_context  # noqa: E402

__all__ = ["Application", "CountCondition", "Fragment", "Operator", "OperatorSpec", "init_app_context"]
