"""transformers' own common tests (`ModelTesterMixin`, `ConfigTester`) on MUX-BERT, at N=1 and N=2.

The transformers wheel ships no tests; `make install` runs scripts/fetch_transformers_tests.py, which extracts
tests/test_modeling_common.py and tests/test_configuration_common.py from the sdist of the INSTALLED version
into ``~/.cache/mux_plms/transformers-tests/<version>/hf_tests`` (``MUX_PLMS_TRANSFORMERS_TESTS`` overrides
the root). Without that folder, or without the test-only package ``parameterized`` (the ``dev`` extra), the
module skips, naming what is missing. Nothing of transformers' test code is copied here.

The sdist holds only the top level of tests/: tests/exporters, tests/generation and tests/utils, which
test_modeling_common.py and test_configuration_common.py import from, are absent. They are stood in for by
empty modules: ``ExportTesterMixin`` and ``GenerationTesterMixin`` become empty mixins (torch.export and
generate tests do not run: MUX-BERT is an encoder that does not generate), and ``config_common_kwargs`` is
empty (so ConfigTester's ``check_config_arguments_init`` checks nothing).

Disabled here, each with its reason (`DISABLED` below; the test is overridden with ``pytest.skip(reason)``),
besides the flags ``test_resize_embeddings = False`` (the prefix demultiplexer's index tokens and the
retrieval head would need resizing too) and ``test_torch_exportable = False`` (tests/exporters is not in the
sdist):

- ``test_attention_outputs``, ``test_hidden_states_output``, ``test_retain_grad_hidden_states_attentions``:
  MUX-BERT returns the mixture's attentions / hidden states (one per group of N, over the prefix positions),
  not the per-instance ``(batch, ...)`` shapes these tests expect.
- ``test_training``, ``test_training_gradient_checkpointing`` (and its ``_use_reentrant_false`` /
  ``_use_reentrant_true`` variants): the common tests make labels only for class names in transformers' own
  Auto mappings, so the MUX heads get none (loss None) and the base model is taken for a head; training is
  the battery's test_trainer_step, gradient checkpointing tests/test_electra.py.
- ``test_eager_matches_sdpa_inference_*`` (25 cases): the dtype x padding grid takes ~35 s of CPU; eager ==
  sdpa is tests/test_models.py::test_sdpa_and_eager_agree.
- at N=2 only: ``test_batching_equivalence`` (a row's output depends on the partners of its group by design:
  tests/test_models.py::test_mixing_couples_instances_within_a_group) and ``test_bc_torch_dtype`` (~8 s, the
  same at every N).

Everything else of `ModelTesterMixin` (and ``ConfigTester.run_common_tests`` as ``test_config``) runs; the
tests transformers itself skips on this machine (flash attention, accelerators, multi-GPU, tensor parallel,
kernels, ...) report their own reason.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import types
import unittest
from pathlib import Path

import pytest
from conftest import tiny_config

VERSION = importlib.metadata.version("transformers")
ROOT = Path(os.environ.get("MUX_PLMS_TRANSFORMERS_TESTS", Path.home() / ".cache" / "mux_plms" / "transformers-tests"))
FOLDER = ROOT / VERSION
if not (FOLDER / "hf_tests" / "test_modeling_common.py").exists():
    pytest.skip(
        f"transformers {VERSION} common tests not fetched into {FOLDER}: run `make install` "
        "(or python scripts/fetch_transformers_tests.py)",
        allow_module_level=True,
    )
try:
    import parameterized  # noqa: F401  (test_modeling_common.py imports it)
except ImportError:
    pytest.skip(
        "transformers' test_modeling_common.py needs the test-only package `parameterized` (the dev extra: "
        "pip install -e '.[dev]')",
        allow_module_level=True,
    )


def _stand_in(name: str, **attributes) -> None:
    """An empty module for a file of transformers' tests/ that the sdist does not ship."""
    parent = name.rsplit(".", 1)[0]
    if parent not in sys.modules:
        package = types.ModuleType(parent)
        package.__path__ = []
        sys.modules[parent] = package
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules.setdefault(name, module)


if str(FOLDER) not in sys.path:
    sys.path.insert(0, str(FOLDER))
_stand_in("hf_tests.exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
_stand_in("hf_tests.generation.test_utils", GenerationTesterMixin=type("GenerationTesterMixin", (), {}))
_stand_in("hf_tests.utils.test_configuration_utils", config_common_kwargs={})

from hf_tests.test_configuration_common import ConfigTester  # noqa: E402
from hf_tests.test_modeling_common import ModelTesterMixin, ids_tensor, random_attention_mask  # noqa: E402

from mux_plms import (  # noqa: E402
    MuxBertConfig,
    MuxBertForMaskedLM,
    MuxBertForSequenceClassification,
    MuxBertForTokenClassification,
    MuxBertModel,
)

pytestmark = pytest.mark.xdist_group("transformers_common")


class MuxBertModelTester:
    """What transformers' common tests ask of a model tester, for tiny MUX-BERT configs at N = `num_instances`."""

    def __init__(self, parent, num_instances: int = 1, batch_size: int = 6, seq_length: int = 7):
        self.parent = parent
        self.num_instances = num_instances
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = True
        self.vocab_size = 120
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 2
        self.num_labels = 3

    def get_config(self):
        return tiny_config(
            num_instances=self.num_instances,
            num_labels=self.num_labels,
            muxing_variant="gaussian_hadamard",
            demuxing_variant="rsa",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": random_attention_mask([self.batch_size, self.seq_length]),
            "token_type_ids": ids_tensor([self.batch_size, self.seq_length], 2),
        }
        return self.get_config(), inputs


def _skip(reason: str):
    def test(self, *args, **kwargs):
        pytest.skip(reason)

    return test


SHAPES = "MUX-BERT returns the mixture's attentions / hidden states (one per group of N, prefix positions)"
NO_LABELS = "the common tests make labels only for transformers' own class names: the MUX heads get none"
SDPA = "the dtype x padding grid costs ~35 s; eager == sdpa: tests/test_models.py::test_sdpa_and_eager_agree"
DISABLED = {
    "test_attention_outputs": SHAPES,
    "test_hidden_states_output": SHAPES,
    "test_retain_grad_hidden_states_attentions": SHAPES,
    "test_training": NO_LABELS,
    "test_training_gradient_checkpointing": NO_LABELS,
    "test_training_gradient_checkpointing_use_reentrant_false": NO_LABELS,
    "test_training_gradient_checkpointing_use_reentrant_true": NO_LABELS,
    **{name: SDPA for name in dir(ModelTesterMixin) if name.startswith("test_eager_matches_sdpa_inference_")},
}
DISABLED_AT_N2 = {
    "test_batching_equivalence": "at N > 1 a row's output depends on its group's partners by design",
    "test_bc_torch_dtype": "~8 s, and the same at every N (run at N=1)",
}


class MuxBertCommonTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MuxBertModel, MuxBertForMaskedLM, MuxBertForSequenceClassification,
                         MuxBertForTokenClassification)  # fmt: skip
    num_instances = 1
    test_resize_embeddings = False  # the prefix index tokens and the retrieval head would need resizing too
    test_torch_exportable = False  # tests/exporters is not in the sdist

    def setUp(self):
        self.model_tester = MuxBertModelTester(self, num_instances=self.num_instances)
        self.config_tester = ConfigTester(self, config_class=MuxBertConfig, hidden_size=32)

    def test_config(self):
        self.config_tester.run_common_tests()

    locals().update({name: _skip(reason) for name, reason in DISABLED.items()})


class MuxBertCommonTestN2(MuxBertCommonTest):
    num_instances = 2
    locals().update({name: _skip(reason) for name, reason in DISABLED_AT_N2.items()})
