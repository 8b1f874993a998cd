"""`MuxModelTesterMixin`: the test battery every model family goes through (tests/test_model_battery.py).

A family's tester subclasses the mixin as a ``Test...`` class and describes the family: its ``model_type``
(the key of `mux_plms.models.families.FAMILIES`), its model classes, the (muxing, demuxing) pairings it
supports, a tiny config factory (hidden 32, 2 layers, vocab 120) and, where the family is not text, how to
make its inputs. The mixin parametrizes its tests from those attributes (class-level `pytest_generate_tests`):

- ``test_forward_contract``: output shape per instance for every class x pairing x N in ``instances``; with
  labels a finite loss equal to ``task_loss_coeff * task + retrieval_loss_coeff * retrieval`` (retrieval
  logits of the expected shape), without them (base model) a mixture of one row per group; gradients reach the
  input layer; eval is deterministic.
- ``test_padding_equivalence``: internal padding (a batch that is not a multiple of N) equals explicit
  all-padding rows, which never count in a token-level loss.
- ``test_length_padding``: where ``length_padding``, positions padded in every row (whatever token is under
  them) do not change the real positions' outputs.
- ``test_save_load_round_trip``: safetensors, the family's complete ``auto_map``, reload through the Auto
  class, bit-identical tensors and the same outputs; the checkpoint's N cannot be overridden.
- ``test_fixed_keys_are_never_redrawn_on_load``: edited fixed keys come back from the checkpoint.
- ``test_remote_code``: ONE subprocess per family, in a Python without mux_plms (`run_without_mux_plms`),
  loads every class with ``trust_remote_code=True`` and reproduces its outputs.
- ``test_trainer_step``: `transformers.Trainer` steps: finite losses, parameters change, one prediction row
  per input.
- ``test_meta_device_init``: a model built on the meta device re-draws exactly the seeded fixed keys; another
  ``muxing_seed`` gives other keys.

A check that cannot apply to a family is overridden in its tester with ``pytest.skip("reason")``.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from mux_testing import (
    BATCH,
    LENGTH,
    NUM_LABELS,
    TOKEN_LEVEL,
    auto_name,
    check_remote_code,
    check_save_load,
    check_trainer_step,
    kind_of,
    main_output,
    make_inputs,
    make_labels,
    synthetic_text_classification,
)

from mux_plms import MUXING_VARIANTS
from mux_plms.models.families import FAMILIES


class MuxModelTesterMixin:
    """Mixed into a ``Test<Family>`` class; see the module docstring. Override the family's description below."""

    family: str = ""  # model_type: the key of FAMILIES
    model_classes: tuple = ()
    pairings: tuple[tuple[str, str], ...] = ()  # (muxing, demuxing) run by the forward and padding tests
    instances: tuple[int, ...] = (1, 2, 5)  # N of the forward contract
    padded_instances: tuple[int, ...] = (2, 5)  # N of the padding test (BATCH=7 is a multiple of neither)
    save_load_instances: tuple[int, ...] = (2,)
    save_load_pairings: tuple[tuple[str, str], ...] | None = None  # None: `pairings`
    meta_muxings: tuple[str, ...] = tuple(MUXING_VARIANTS)
    meta_classes: tuple | None = None  # classes of the meta-device test; None: the first model class
    meta_demuxing: str = "rsa"
    length_padding: bool = True  # inputs are sequences whose padded positions must not be read
    save_load_tolerance: tuple[float, float] = (1e-6, 1e-7)  # rtol, atol of the reloaded model's outputs
    num_labels: int = NUM_LABELS

    # ------------------------------------------------------------------------------------ the family

    def get_config(self, **overrides):
        raise NotImplementedError

    def config_for(self, model_class, **overrides):
        """The config of `model_class` (a family whose classes need different configs overrides this)."""
        return self.get_config(**overrides)

    def build(self, model_class, config):
        return model_class(config)

    def make_inputs(self, batch: int = BATCH) -> dict:
        return make_inputs(batch=batch)

    def make_labels(self, model_class, inputs: dict):
        return make_labels(kind_of(model_class), inputs, self.num_labels)

    def expected_shape(self, model_class, config, batch: int) -> tuple:
        return {
            "Model": lambda: (batch, LENGTH, config.hidden_size),
            "MaskedLM": lambda: (batch, LENGTH, config.vocab_size),
            "SequenceClassification": lambda: (batch, self.num_labels),
            "TokenClassification": lambda: (batch, LENGTH, self.num_labels),
            "PreTraining": lambda: (batch, LENGTH),
            "ImageClassification": lambda: (batch, self.num_labels),
        }[kind_of(model_class)]()

    def expected_retrieval_shape(self, config, batch: int) -> tuple:
        """Text: one reconstruction of the selected instance per group."""
        return (-(-batch // config.num_instances), LENGTH, config.vocab_size)

    def gradient_parameter(self, model) -> torch.Tensor:
        return model.get_input_embeddings().weight

    def pad_batch(self, inputs: dict, extra: int, config) -> dict:
        """`inputs` with `extra` explicit all-padding rows: pad tokens under a zero mask."""
        fill = {"input_ids": config.pad_token_id or 0}
        return {k: torch.cat([v, torch.full((extra, *v.shape[1:]), fill.get(k, 0), dtype=v.dtype)]) for k, v in inputs.items()}  # fmt: skip

    def pad_length(self, inputs: dict, extra: int) -> dict:
        """`inputs` with `extra` positions appended to every row, masked, with real tokens under the mask."""
        out = dict(inputs)
        out["input_ids"] = torch.cat([inputs["input_ids"], torch.full((len(inputs["input_ids"]), extra), 55)], 1)
        for key in ("attention_mask", "token_type_ids"):
            if key in inputs:
                out[key] = torch.cat([inputs[key], torch.zeros(len(inputs[key]), extra, dtype=inputs[key].dtype)], 1)
        return out

    def instance_keys(self, model) -> torch.Tensor:
        return getattr(model, "base_model", model).multiplexer.instance_keys

    def reload_class(self, model) -> type:
        """The class whose from_pretrained must refuse another N for the checkpoint of `model`."""
        return type(model)

    def check_saved(self, saved: dict, model) -> None:
        """Family-specific checks of the saved config.json."""

    def trainer_model(self):
        cls = FAMILIES[self.family].head_class("sequence")
        config = self.get_config(num_instances=2, num_labels=2, demuxing_variant="rsa", hidden_dropout_prob=0.0)
        return cls(config), 2

    def trainer_dataset(self):
        return synthetic_text_classification()

    # ------------------------------------------------------------------------------- parametrization

    def pytest_generate_tests(self, metafunc):
        args = metafunc.fixturenames
        if "model_class" in args:
            metafunc.parametrize("model_class", self.model_classes, ids=[c.__name__ for c in self.model_classes])
        if "pairing" in args:
            pairings = self.pairings
            if metafunc.function.__name__ == "test_save_load_round_trip" and self.save_load_pairings is not None:
                pairings = self.save_load_pairings
            metafunc.parametrize("pairing", pairings, ids=[f"{m}-{d}" for m, d in pairings])
        for name, values in (("n", self.instances), ("padded_n", self.padded_instances),
                             ("saved_n", self.save_load_instances)):  # fmt: skip
            if name in args:
                metafunc.parametrize(name, values, ids=[f"N{v}" for v in values])
        if "muxing" in args:
            metafunc.parametrize("muxing", self.meta_muxings)
        if "meta_class" in args:
            classes = self.meta_classes or self.model_classes[:1]
            metafunc.parametrize("meta_class", classes, ids=[c.__name__ for c in classes])

    def _contract_config(self, model_class, pairing, n):
        muxing, demuxing = pairing
        return self.config_for(model_class, num_instances=n, muxing_variant=muxing, demuxing_variant=demuxing,
                               num_labels=self.num_labels, retrieval_loss_coeff=0.1)  # fmt: skip

    # ---------------------------------------------------------------------------------------- tests

    def test_forward_contract(self, model_class, pairing, n):
        config = self._contract_config(model_class, pairing, n)
        torch.manual_seed(0)
        model = self.build(model_class, config)
        inputs = self.make_inputs()
        labels = self.make_labels(model_class, inputs)
        groups = -(-BATCH // n)

        model.train()
        output = model(**inputs, **({"labels": labels} if labels is not None else {}))
        assert main_output(output).shape == self.expected_shape(model_class, config, BATCH)
        if labels is None:
            mixed = getattr(output, "mixed_hidden_state", None)
            if mixed is not None:
                assert mixed.shape[0] == groups  # one mixture per group of N instances
            loss = main_output(output).pow(2).mean()
        else:
            loss = output.loss
            assert torch.isfinite(loss) and torch.isfinite(output.task_loss) and torch.isfinite(output.retrieval_loss)
            expected = config.task_loss_coeff * output.task_loss + config.retrieval_loss_coeff * output.retrieval_loss
            torch.testing.assert_close(loss, expected)
            assert output.retrieval_logits.shape == self.expected_retrieval_shape(config, BATCH)
        loss.backward()
        grad = self.gradient_parameter(model).grad
        assert grad is not None and grad.abs().sum() > 0

        model.eval()
        with torch.no_grad():
            first = main_output(model(**inputs))
            torch.testing.assert_close(first, main_output(model(**inputs)), rtol=0, atol=0)

    def test_padding_equivalence(self, model_class, pairing, padded_n):
        config = self._contract_config(model_class, pairing, padded_n)
        torch.manual_seed(0)
        model = self.build(model_class, config).eval()
        inputs = self.make_inputs()
        token_level = kind_of(model_class) in TOKEN_LEVEL
        labels = self.make_labels(model_class, inputs) if token_level else None
        with torch.no_grad():
            internal = model(**inputs, **({"labels": labels} if token_level else {}))
            extra = (-BATCH) % padded_n
            assert extra, "the padding test needs a batch that is not a multiple of N"
            padded_labels = torch.cat([labels, torch.full((extra, labels.shape[1]), -100)]) if token_level else None
            explicit = model(**self.pad_batch(inputs, extra, config),
                             **({"labels": padded_labels} if token_level else {}))  # fmt: skip
            assert main_output(explicit).shape[0] == BATCH + extra
            torch.testing.assert_close(main_output(internal), main_output(explicit)[:BATCH], rtol=1e-5, atol=1e-6)
            if token_level:  # padding rows never count in a loss
                torch.testing.assert_close(internal.loss, explicit.loss, rtol=1e-5, atol=1e-6)

    def test_length_padding(self, model_class, pairing, n):
        """Positions padded in every row (real tokens under the mask) do not change the real positions' outputs."""
        if not self.length_padding:
            pytest.skip(f"{self.family} inputs have no positions to pad")
        config = self._contract_config(model_class, pairing, n)
        torch.manual_seed(0)
        model = self.build(model_class, config).eval()
        batch = BATCH  # an odd batch: a group with the internal padding instance is checked too
        inputs = self.make_inputs(batch)
        with torch.no_grad():
            plain = main_output(model(**inputs))
            longer = main_output(model(**self.pad_length(inputs, 2)))
        if kind_of(model_class) != "SequenceClassification":
            longer = longer[:, :LENGTH]
        torch.testing.assert_close(plain, longer, rtol=1e-5, atol=1e-6)

    def test_save_load_round_trip(self, model_class, pairing, saved_n, tmp_path):
        muxing, demuxing = pairing
        config = self.config_for(model_class, num_instances=saved_n, muxing_variant=muxing, demuxing_variant=demuxing,
                                 num_labels=self.num_labels)  # fmt: skip
        torch.manual_seed(0)
        model = self.build(model_class, config)
        family = FAMILIES[self.family]
        config_module = family.config.rsplit(".", 1)[0]
        auto = getattr(transformers, auto_name(model_class))
        saved = check_save_load(model, tmp_path, auto, self.family, config_module, self.make_inputs(),
                                tolerance=self.save_load_tolerance)  # fmt: skip
        # every Auto class of the family, not only the saved one; the saved class may be a subclass of the entry
        expected = {
            **family.auto_map(),
            auto_name(model_class): f"{family.models[auto_name(model_class)].rsplit('.', 1)[0]}.{type(model).__name__}",
        }
        assert saved["auto_map"] == expected
        self.check_saved(saved, model)
        other = saved_n + 2
        with pytest.raises(ValueError, match=f"trained with num_instances={saved_n}, but num_instances={other} was"):
            self.reload_class(model).from_pretrained(tmp_path, num_instances=other)

    def test_fixed_keys_are_never_redrawn_on_load(self, tmp_path):
        """Keys come from the checkpoint, not the seed: a checkpoint with edited keys keeps them."""
        cls = self.model_classes[0]
        model = self.build(cls, self.config_for(cls, muxing_variant="gaussian_hadamard", demuxing_variant="rsa"))
        with torch.no_grad():
            self.instance_keys(model).mul_(-3.0)
        model.save_pretrained(tmp_path)
        loaded = type(model).from_pretrained(tmp_path)
        torch.testing.assert_close(self.instance_keys(loaded), self.instance_keys(model), rtol=0, atol=0)

    def test_remote_code(self, tmp_path):
        torch.manual_seed(0)
        models = {
            cls.__name__: self.build(cls, self.config_for(cls, num_instances=2, num_labels=self.num_labels))
            for cls in self.model_classes
        }
        check_remote_code(tmp_path, models, self.make_inputs())

    def test_trainer_step(self, tmp_path):
        torch.manual_seed(0)
        model, num_labels = self.trainer_model()
        check_trainer_step(model, tmp_path, self.trainer_dataset(), num_labels)

    def test_meta_device_init(self, meta_class, muxing):
        """Models built on the meta device (as from_pretrained does) re-draw exactly the seeded fixed keys."""
        cls = meta_class
        kwargs = dict(muxing_variant=muxing, num_instances=3, demuxing_variant=self.meta_demuxing)
        reference = self.build(cls, self.config_for(cls, **kwargs))
        with torch.device("meta"):
            model = self.build(cls, self.config_for(cls, **kwargs))
        model.to_empty(device="cpu")
        model.init_weights()
        torch.testing.assert_close(self.instance_keys(model), self.instance_keys(reference), rtol=0, atol=0)
        if muxing == "binary_hadamard":
            return  # binary keys are deterministic chunks: no randomness to seed
        other_seed = self.build(cls, self.config_for(cls, **kwargs, muxing_seed=1))
        assert not torch.equal(self.instance_keys(other_seed), self.instance_keys(reference))
