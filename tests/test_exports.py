"""The public names: one table per layer, derived, never listed twice by hand."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import mux_plms
from mux_plms import models
from mux_plms.models.families import FAMILIES

MODELS_INIT = Path(models.__file__)


def test_every_family_class_is_exported_by_the_package():
    for family in FAMILIES.values():
        for name, module in family.exports().items():
            cls = getattr(mux_plms, name)
            assert cls is getattr(importlib.import_module(f"mux_plms.models.{module}"), name)
    assert mux_plms.MuxBertConfig is models.MuxBertConfig
    assert {"register_multiplexer", "register_demultiplexer", "MuxMlpForImageClassification"} <= set(mux_plms.__all__)


def test_the_static_names_for_type_checkers_are_the_lazy_table():
    """`mux_plms/models/__init__.py` lists the names for type checkers under TYPE_CHECKING; they must be
    exactly what `__getattr__` serves (and come from the module that defines them)."""
    tree = ast.parse(MODELS_INIT.read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    static = {a.name: node.module for node in block.body for a in node.names}
    assert static == models._EXPORTS


def test_importing_the_packages_imports_neither_torch_nor_transformers():
    code = (
        "import sys, mux_plms, mux_plms.models; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="MuxGptModel"):
        models.MuxGptModel  # noqa: B018
    with pytest.raises(AttributeError):
        mux_plms.MuxGptModel  # noqa: B018
