"""Test utilities: a loopback Hugging Face Hub (:class:`HubServer`, ``python -m mux_plms.testing.hub_server``).

Imported lazily so that ``python -m mux_plms.testing.hub_server`` does not import the module twice."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hub_server import HubServer
    from .hub_store import RepoStore

__all__ = ["HubServer", "RepoStore"]


def __getattr__(name: str):
    if name == "HubServer":
        from .hub_server import HubServer

        return HubServer
    if name == "RepoStore":
        from .hub_store import RepoStore

        return RepoStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
