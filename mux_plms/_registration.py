"""Registration of the MUX classes with the transformers Auto classes (local use and remote code).

Driven by the family table (:data:`mux_plms.models.families.FAMILIES`): every family's config and model
classes are registered with their Auto classes, and every model class gets the family's complete ``auto_map``
(``mux_auto_map``, written into the config on save), injected here rather than hand-written in each file; the
model card writer of ``model.push_to_hub`` is injected the same way.
"""

from __future__ import annotations

import transformers
from transformers import AutoConfig

from .models.families import FAMILIES as FAMILY_TABLE
from .models.families import Family
from .models.modeling_mux_utils import MuxPreTrainedMixin

# model_type -> (config class, {auto class name: model class}) of the registered families
FAMILIES: dict[str, tuple[type, dict[str, type]]] = {}


def register_family(family: Family) -> None:
    """Register a model family locally (Auto classes) and for remote code (``auto_map`` on save)."""
    config_class = family.config_class()
    models = {auto_name: family.model_class(auto_name) for auto_name in family.models}
    FAMILIES[family.model_type] = (config_class, models)
    AutoConfig.register(family.model_type, config_class, exist_ok=True)
    config_class.register_for_auto_class()
    auto_map = family.auto_map()
    for auto_name, model_class in models.items():
        getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)
        model_class.mux_auto_map = dict(auto_map)


def _write_push_card(working_dir, repo_id) -> None:
    """`model.push_to_hub`'s card: the publishing layer, imported only when a model is pushed."""
    from .hub.card import write_push_card

    write_push_card(working_dir, repo_id)


# models/ imports nothing outside itself: the publishing layer's card writer is injected here.
MuxPreTrainedMixin.push_card_writer = staticmethod(_write_push_card)

for _family in FAMILY_TABLE.values():
    register_family(_family)
