"""mux-plms: data multiplexing for pre-trained language models, native to Hugging Face transformers.

Importing this package registers the MUX model families with the transformers Auto classes, so that
``import mux_plms`` followed by ``AutoModel.from_pretrained(mux_folder)`` loads the local MUX classes.

The import itself is light (no torch, no transformers), so the ``mux-plms`` command starts fast:

* the public names (``MuxBertConfig``, ``MuxBertForSequenceClassification``, ..., ``convert_legacy_checkpoint``)
  are loaded on first access (PEP 562 ``__getattr__`` over the :data:`_EXPORTS` table);
* the Auto classes are registered (:mod:`mux_plms._registration`) at the first moment they can be used: right
  away when transformers' Auto classes are already imported, else as soon as they are (a post-import hook on
  the ``transformers`` and ``mux_plms`` modules), or when a MUX class is first taken from this package,
  whichever comes first. A lookup through ``AutoConfig`` / ``AutoModel*`` needs
  ``transformers.models.auto.configuration_auto`` imported, so it always finds the MUX families registered.
  Registration waits until no ``transformers`` / ``mux_plms`` module is half-imported (registering imports the
  model code, which imports transformers modules). :func:`ensure_registered` does it explicitly.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .models import __all__ as _MODEL_NAMES  # light: the family table, no torch

_MODELS = "mux_plms.models"
# public name -> the module that defines it (imported on first access). The model names are those of
# `mux_plms.models` (its family table plus the variant registries), not a second list.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(_MODEL_NAMES, _MODELS),
    "convert_legacy_checkpoint": "mux_plms.hub.convert",  # original MUX-PLMs checkpoints
    # MUX-aware transformers pipelines (whole mux groups per batch)
    "pipeline": "mux_plms.pipelines",
    "MuxTextClassificationPipeline": "mux_plms.pipelines",
    "MuxTokenClassificationPipeline": "mux_plms.pipelines",
}

__all__ = [*_EXPORTS, "ensure_registered"]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time these are loaded by __getattr__
    from .hub.convert import convert_legacy_checkpoint
    from .pipelines import MuxTextClassificationPipeline, MuxTokenClassificationPipeline, pipeline
    from .models import *  # noqa: F403  (the static list of the model names: mux_plms/models/__init__.py)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later accesses skip __getattr__
    if module_name == _MODELS:
        _REGISTRAR.try_register()
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# ============================================================================================ Auto classes

_REGISTRATION = "mux_plms._registration"  # importing it registers every family
_AUTO_CONFIG = "transformers.models.auto.configuration_auto"  # every Auto class looks models up through it
_WATCHED = frozenset({"transformers", "mux_plms"})  # top-level packages whose imports are followed
# loaders made for one module each (so wrapping an instance's exec_module affects that module only)
_FILE_LOADERS = (
    importlib.machinery.SourceFileLoader,
    importlib.machinery.SourcelessFileLoader,
    importlib.machinery.ExtensionFileLoader,
)


class _AutoClassRegistrar(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` entry that finds nothing itself: it lets the other finders find ``transformers.*`` and
    ``mux_plms.*`` modules, follows their execution (file-based loaders only, whose instances serve one module)
    and, after each one, registers the Auto classes if transformers' Auto machinery is loaded and no followed
    module is half-imported. Removes itself once the registration is done."""

    def __init__(self) -> None:
        self.executing: set[str] = set()  # followed modules whose code is running (any thread)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------ import hook
    def find_spec(self, fullname: str, path=None, target=None):
        if fullname.partition(".")[0] not in _WATCHED:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if isinstance(loader, _FILE_LOADERS) and loader.name == fullname:
            loader.exec_module = self._following(loader.exec_module, fullname)
        return spec

    def _following(self, exec_module, fullname: str):
        def exec_and_register(module) -> None:
            self.executing.add(fullname)
            try:
                exec_module(module)
            finally:
                self.executing.discard(fullname)
            if _AUTO_CONFIG in sys.modules:
                self.try_register(from_hook=True)

        return exec_and_register

    # ------------------------------------------------------------------------------------ registration
    @property
    def done(self) -> bool:
        return _REGISTRATION in sys.modules and _REGISTRATION not in self.executing

    def try_register(self, from_hook: bool = False, wait: bool = False) -> bool:
        """Register now unless a followed module is half-imported (then a later import does it) or another
        thread is registering (`wait`: wait for it). True when the Auto classes are registered."""
        if self.done:
            self.uninstall()
            return True
        if self.executing or not self._lock.acquire(blocking=wait):
            return False
        try:
            if self.done:  # another thread registered while we waited
                return True
            importlib.import_module(_REGISTRATION)
        except Exception as error:
            if not from_hook:
                raise
            # Failing some other module's import because of ours would be worse; say so once, stop trying.
            self.uninstall()
            warnings.warn(f"mux_plms could not register its Auto classes: {error!r}", RuntimeWarning, stacklevel=2)
            return False
        finally:
            self._lock.release()
        self.uninstall()
        return True

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


def ensure_registered() -> None:
    """Register the MUX families with the transformers Auto classes now (imports torch and the model code).

    Usually unnecessary: it happens by itself as soon as transformers' Auto classes are imported. Raises
    `RuntimeError` when called while a ``transformers`` / ``mux_plms`` module is half-imported."""
    if not _REGISTRAR.try_register(wait=True):
        raise RuntimeError(
            "mux_plms.ensure_registered() was called while these modules were being imported: "
            f"{', '.join(sorted(_REGISTRAR.executing))}; call it after they are imported"
        )


_REGISTRAR: _AutoClassRegistrar = globals().get("_REGISTRAR") or _AutoClassRegistrar()  # one per process
if _AUTO_CONFIG in sys.modules:  # transformers' Auto classes are in use already: register right away
    _REGISTRAR.try_register()
else:
    _REGISTRAR.install()
