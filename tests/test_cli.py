"""The `mux-plms` command line: one list syntax for every command, clear errors on bad items, `--help`
without torch, and the lazy `import mux_plms` that still registers the Auto classes."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT

from mux_plms.cli import COMMANDS, build_parser, main
from mux_plms.utils.cli_types import ListAction, add_list_argument, split_list


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser(argv[0]).parse_args(argv)


def run_python(code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter that imports this checkout (not the venv's editable install); it must
    succeed without a mux_plms registration warning."""
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)] if code else [sys.executable, *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "could not register" not in result.stderr, result.stderr
    return result


# ------------------------------------------------------------------------------------------ the list type
def test_split_list_converts_and_names_bad_items():
    assert split_list("1,2, 5", int) == [1, 2, 5]
    assert split_list("a,,b,", str) == ["a", "b"]
    with pytest.raises(argparse.ArgumentTypeError, match=r"^--num-instances: '2x' is not an integer$"):
        split_list("1,2x", int, option="--num-instances")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^--rate: 'fast' is not a number$"):
        split_list("0.5,fast", float, option="--rate")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^--heads: 'tokens' is not one of sequence, token$"):
        split_list("sequence,tokens", choices=("sequence", "token"), option="--heads")


def test_list_action_takes_commas_spaces_and_both():
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_list_argument(parser, "--n", "-N", item_type=int, default=[1])
    add_list_argument(parser, "--stages", join=True, choices=("retrieval", "mlm"), default="retrieval")
    add_list_argument(parser, "--big", item_type=int, check=lambda v: sorted(set(v)), default=[2])
    for argv in (["--n", "1,2,5"], ["--n", "1", "2", "5"], ["-N", "1,2", "5"], ["--n", "1", "--n", "1,2,5"]):
        assert parser.parse_args(argv).n == [1, 2, 5], argv
    assert parser.parse_args([]).n == [1]
    assert parser.parse_args(["--stages", "retrieval", "mlm"]).stages == "retrieval,mlm"
    assert parser.parse_args(["--stages", "retrieval,mlm"]).stages == "retrieval,mlm"
    assert parser.parse_args(["--big", "5,2", "2"]).big == [2, 5]
    with pytest.raises(argparse.ArgumentError, match="--n: '2x' is not an integer"):
        parser.parse_args(["--n", "1,2x"])
    with pytest.raises(argparse.ArgumentError, match="--stages: 'electra' is not one of retrieval, mlm"):
        parser.parse_args(["--stages", "retrieval,electra"])
    with pytest.raises(argparse.ArgumentError, match="--n: expected at least one value"):
        parser.parse_args(["--n", ","])


def test_list_action_refuses_argparse_choices():
    with pytest.raises(ValueError, match="allowed"):
        argparse.ArgumentParser().add_argument("--x", action=ListAction, choices=["a"])


# ------------------------------------------------------------------------------------------ every command
@pytest.mark.parametrize(
    "comma, spaces, dest, expected",
    [
        (["bench", "--num-instances", "1,2,5,10"], ["bench", "--num-instances", "1", "2", "5", "10"],
         "num_instances", [1, 2, 5, 10]),
        (["bench", "-N", "1,2"], ["bench", "-N", "1", "2"], "num_instances", [1, 2]),
        (["bench", "--sizes", "tiny,base"], ["bench", "--sizes", "tiny", "base"], "sizes", ["tiny", "base"]),
        (["bench", "--lengths", "16,128"], ["bench", "--lengths", "16", "128"], "lengths", [16, 128]),
        (["bench", "--heads", "sequence,token"], ["bench", "--heads", "sequence", "token"], "heads",
         ["sequence", "token"]),
        (["bench", "--muxing", "contextual,binary_hadamard"], ["bench", "--muxing", "contextual", "binary_hadamard"],
         "muxing", ["contextual", "binary_hadamard"]),
        (["bench", "--demuxing", "rsa,mlp"], ["bench", "--demuxing", "rsa", "mlp"], "demuxing", ["rsa", "mlp"]),
        (["bench", "--variants", "gaussian_hadamard+rsa,contextual+prefix"],
         ["bench", "--variants", "gaussian_hadamard+rsa", "contextual+prefix"], "variants",
         ["gaussian_hadamard+rsa", "contextual+prefix"]),
        (["demo", "--num-instances", "5,2,10"], ["demo", "--num-instances", "5", "2", "10"], "num_instances",
         [2, 5, 10]),
        (["demo", "--tasks", "polarity,wnut16"], ["demo", "--tasks", "polarity", "wnut16"], "tasks",
         "polarity,wnut16"),
        (["demo", "--pretrain-stages", "retrieval,mlm"], ["demo", "--pretrain-stages", "retrieval", "mlm"],
         "pretrain_stages", "retrieval,mlm"),
        (["pretrain", "--stages", "retrieval,mlm"], ["pretrain", "--stages", "retrieval", "mlm"], "stages",
         "retrieval,mlm"),
        (["pretrain", "--report_to", "tensorboard,wandb"], ["pretrain", "--report_to", "tensorboard", "wandb"],
         "report_to", "tensorboard,wandb"),
        (["data", "prepare", "--corpora", "ptb,polarity"], ["data", "prepare", "--corpora", "ptb", "polarity"],
         "corpora", ["ptb", "polarity"]),
    ],
)  # fmt: skip
def test_every_list_option_takes_both_syntaxes(comma, spaces, dest, expected):
    assert getattr(parse(comma), dest) == expected
    assert getattr(parse(spaces), dest) == expected


def test_defaults_keep_their_types():
    bench = parse(["bench"])
    assert bench.num_instances == [1, 2, 5, 10, 20] and bench.lengths == [128] and bench.sizes == ["base"]
    demo = parse(["demo"])
    assert demo.num_instances == [2, 5] and demo.tasks == "polarity,wnut16" and demo.pretrain_stages is None
    assert parse(["pretrain"]).stages == "retrieval"
    assert parse(["data", "prepare"]).corpora == ["ptb", "polarity", "wnut16"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_command_has_a_list_option_of_another_syntax(command):
    """Every multi-value option of every command (serve and push included) goes through the shared list type."""
    parser = build_parser(command)
    subparser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in subparser._actions:
        if action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1:
            assert isinstance(action, ListAction), f"{command} {action.option_strings}: not the shared list type"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--num-instances", "1,2x"], "--num-instances: '2x' is not an integer"),
        (["bench", "-N", "1", "two"], "-N: 'two' is not an integer"),
        (["bench", "--heads", "sequence,tokens"], "--heads: 'tokens' is not one of sequence, token"),
        (["bench", "--sizes", "huge"], "--sizes: 'huge' is not one of"),
        (["bench", "--lengths", "16,x"], "--lengths: 'x' is not an integer"),
        (["demo", "--num-instances", "2,5x"], "--num-instances: '5x' is not an integer"),
        (["demo", "--num-instances", "1,2"], "--num-instances: N values must be >= 2"),
        (["data", "prepare", "--corpora", "ptb,imdb"], "--corpora: 'imdb' is not one of ptb, polarity, wnut16"),
    ],
)
def test_bad_items_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_documents_the_comma_syntax(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "--num-instances N[,N...], -N N[,N...]" in " ".join(out.split())
    assert "--heads HEAD[,HEAD...]" in out and "N [N ...]" not in out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "comma-separated" in out and all(name in out for name in COMMANDS)


def test_bench_parser_choices_match_their_sources():
    """bench/cli.py writes the option values out (so that --help imports no torch); they must not drift."""
    from mux_plms.bench import cli
    from mux_plms.bench.models import ATTN_IMPLEMENTATIONS, DTYPES, QUANTIZATIONS, QUANTIZE_SCOPES
    from mux_plms.models.configuration_mux_bert import DEMUXING_VARIANTS, MUXING_VARIANTS

    assert cli.MUXING_CHOICES == tuple(MUXING_VARIANTS)
    assert cli.DEMUXING_CHOICES == tuple(DEMUXING_VARIANTS)
    assert cli.DTYPE_CHOICES == tuple(DTYPES)
    assert cli.QUANTIZATION_CHOICES == tuple(QUANTIZATIONS)
    assert cli.QUANTIZE_SCOPE_CHOICES == tuple(QUANTIZE_SCOPES)
    assert cli.ATTN_IMPLEMENTATION_CHOICES == tuple(ATTN_IMPLEMENTATIONS)


# ------------------------------------------------------------------------------------------ start-up
HEAVY = ("torch", "transformers", "datasets", "huggingface_hub", "numpy")


def test_help_of_every_command_imports_no_torch():
    code = f"""
        import contextlib, io, sys
        from mux_plms.cli import COMMANDS, main
        for argv in [["--help"], *[[name, "--help"] for name in COMMANDS]]:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    main(argv)
                except SystemExit as exit:
                    assert exit.code == 0, (argv, exit.code)
            assert "usage: mux-plms" in out.getvalue(), argv
            heavy = [name for name in {HEAVY!r} if name in sys.modules]
            assert not heavy, (argv, heavy)
        print("ok")
    """
    assert run_python(code).stdout.strip() == "ok"


def test_python_m_cli_help_finishes_without_torch():
    result = run_python("", "-X", "importtime", "-m", "mux_plms.cli", "--help")
    assert "usage: mux-plms" in result.stdout and "bench" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert {"mux_plms", "mux_plms.utils.cli_types"} <= imported  # the package was imported (-m runs cli as __main__)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


# ------------------------------------------------------------------------------------------ lazy import mux_plms
def test_public_api_is_complete_and_lazy():
    import mux_plms

    assert set(mux_plms.__all__) <= set(dir(mux_plms))
    for name in mux_plms.__all__:
        assert getattr(mux_plms, name) is not None, name
    from mux_plms import MuxBertForSequenceClassification, convert_legacy_checkpoint
    from mux_plms.hub.convert import convert_legacy_checkpoint as original
    from mux_plms.models import MuxBertForSequenceClassification as model_class

    assert MuxBertForSequenceClassification is model_class and convert_legacy_checkpoint is original
    with pytest.raises(AttributeError, match="has no attribute 'NotAThing'"):
        mux_plms.NotAThing  # noqa: B018


REGISTERED = """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification
    config = AutoConfig.for_model("mux_bert", num_instances=2, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64, vocab_size=50)
    assert type(config).__module__ == "mux_plms.models.configuration_mux_bert", type(config)
    model = AutoModelForSequenceClassification.from_config(config)
    assert type(model).__name__ == "MuxBertForSequenceClassification", type(model)
    assert type(AutoConfig.for_model("mux_electra")).__name__ == "MuxElectraConfig"
    assert AutoModelForTokenClassification.from_config(config).__class__.__name__ == "MuxBertForTokenClassification"
    print("registered")
"""


@pytest.mark.slow
def test_import_mux_plms_is_light_and_registers_when_transformers_auto_is_imported():
    code = """
        import sys
        import mux_plms
        assert not [m for m in ("torch", "transformers") if m in sys.modules], "import mux_plms is not light"
        assert "mux_plms._registration" not in sys.modules
    """
    assert run_python(textwrap.dedent(code) + textwrap.dedent(REGISTERED)).stdout.strip() == "registered"


@pytest.mark.slow
def test_registration_when_transformers_auto_was_imported_first():
    code = """
        from transformers import AutoConfig, AutoModel  # the Auto classes exist before mux_plms is imported
        import mux_plms
    """
    assert run_python(textwrap.dedent(code) + textwrap.dedent(REGISTERED)).stdout.strip() == "registered"


@pytest.mark.slow
def test_registration_waits_for_half_imported_transformers_modules():
    """`from transformers import BertModel` imports the Auto classes from inside modeling_bert's own import;
    registering right then would import the MUX models against a half-imported modeling_bert."""
    code = """
        import mux_plms
        from transformers import BertModel
        import sys
        assert "mux_plms._registration" in sys.modules  # registered once modeling_bert was complete
        assert not any(type(f).__name__ == "_AutoClassRegistrar" for f in sys.meta_path)  # the hook is gone
    """
    assert run_python(textwrap.dedent(code) + textwrap.dedent(REGISTERED)).stdout.strip() == "registered"


@pytest.mark.slow
def test_registration_through_a_subpackage_import():
    code = """
        from mux_plms.models import MuxBertConfig  # not through mux_plms.__getattr__
    """
    assert run_python(textwrap.dedent(code) + textwrap.dedent(REGISTERED)).stdout.strip() == "registered"


def test_ensure_registered():
    import mux_plms

    mux_plms.ensure_registered()
    from transformers import AutoConfig

    assert type(AutoConfig.for_model("mux_lstm")).__name__ == "MuxLstmConfig"
