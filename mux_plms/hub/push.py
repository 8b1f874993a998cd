"""Publish a MUX model folder to the Hugging Face Hub with a generated model card.

The upload is one commit of the folder's allow-listed top-level files (:data:`UPLOADED_NAMES` and
:data:`UPLOADED_PATTERNS`: the safetensors weights and their index, ``config.json``, tokenizer files, the
remote-code ``.py`` files its ``auto_map`` needs, ``training_record.json``), a freshly generated
``README.md``, and, if the folder lacks them, the remote-code files and the complete ``auto_map`` (so
``trust_remote_code=True`` users need nothing but transformers). Nothing else goes up: no pickle, no
trainer state, no stray file (a ``credentials.json`` beside the weights stays home), no sub-folder, and no
symbolic link leading out of the folder. Nothing is written locally: the card and any patched
``config.json`` are uploaded from memory.

Before anything is sent, the folder must be whole: it carries the completion marker the package writes
last (``mux_plms_complete.json``, see :mod:`mux_plms.utils.folders`) and its files match it, and every
safetensors file parses to its end. A folder saved by a plain ``save_pretrained`` has no marker: push it
with ``allow_unmarked=True`` (``mux-plms push --allow-unmarked``) once you know it is complete.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import logging
import os
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..utils.folders import COMPLETE_MARKER, IncompleteFolderError, check_complete, contained_file
from .card import render_model_card

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload MUX model with mux-plms"
# What a model repository needs; everything else in the folder stays local.
UPLOADED_NAMES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "training_record.json",
        # tokenizers
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
        "tokenizer.model",
        "chat_template.jinja",
        # image processors (MUX vision models)
        "preprocessor_config.json",
    }
)
UPLOADED_PATTERNS = ("model-*-of-*.safetensors",)  # weight shards
WEIGHT_PATTERNS = ("*.safetensors", "model.safetensors.index.json")
# Kept for the message of files the allow-list leaves out.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class PushError(RuntimeError):
    """Publishing failed: offline mode, unreachable endpoint, or the Hub refused a request."""


class IncompleteModelError(ValueError):
    """The folder is not whole: no completion marker, files that differ from it, or weights that do not parse."""


def _inside(directory: Path, path: Path) -> bool:
    """True when `path` is not a symbolic link leading out of `directory` (links inside it are fine)."""
    try:
        contained_file(directory, path.name)
    except ValueError:
        return False
    return True


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """Return the folder if it holds a MUX model saved with safetensors weights; raise a clear error otherwise."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"Model folder {directory} does not exist (model_dir)")
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a model folder: it has no config.json")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        for shard in weight_files(directory):
            if not shard.is_file():
                raise FileNotFoundError(f"{directory} is missing the weight shard {shard.name} listed in {index.name}")
    elif not (directory / "model.safetensors").is_file():
        pickled = [p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        hint = (
            f" It holds pickled weights ({', '.join(pickled)}): load the model and save it again with "
            "`save_pretrained` (safetensors)."
            if pickled
            else " Save the model with `save_pretrained` first."
        )
        raise FileNotFoundError(f"{directory} has no safetensors weights (model.safetensors).{hint}")
    return directory


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of the folder: ``model.safetensors``, or the shards its index lists (each
    checked to lie inside the folder)."""
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        return [directory / "model.safetensors"]
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise IncompleteModelError(f"{index} is not a readable weight index: {error}") from error
    return [contained_file(directory, shard, f"shard listed in {index.name}") for shard in shards]


def check_weights_parse(directory: Path) -> None:
    """Every safetensors file must open and cover its whole length (a file cut short, e.g. by a process
    killed while saving, does not): raise `IncompleteModelError` naming the file otherwise."""
    from safetensors import SafetensorError, safe_open

    for path in weight_files(directory):
        if not _inside(directory, path):
            raise IncompleteModelError(f"{path} is a symbolic link leading out of {directory}: refused")
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError, ValueError) as error:
            raise IncompleteModelError(
                f"{path} is not a complete safetensors file ({error}): the weights were not written whole. "
                "Save the model again."
            ) from error


def check_folder_whole(directory: Path, allow_unmarked: bool = False) -> dict | None:
    """The checks before a push: the completion marker (unless `allow_unmarked`) and parsable weights.
    Returns the marker (None when unmarked and allowed)."""
    marker = None
    try:
        marker = check_complete(directory)
    except IncompleteFolderError as error:
        if not allow_unmarked or (directory / COMPLETE_MARKER).is_file():
            # A marker that does not match is never overridden: the folder changed after it was written.
            hint = (
                " If you saved it yourself (a plain save_pretrained) and know it is complete, push it with "
                "--allow-unmarked (push_to_hub(..., allow_unmarked=True))."
                if not (directory / COMPLETE_MARKER).is_file()
                else " Save the model again (its files changed after the marker was written)."
            )
            raise IncompleteModelError(f"Refusing to push: {error}.{hint}") from error
    check_weights_parse(directory)
    if marker is not None:
        listed = set(marker.get("files", {}))
        for path in [directory / "config.json", *weight_files(directory)]:
            name = path.relative_to(directory).as_posix()
            if name not in listed:
                raise IncompleteModelError(
                    f"Refusing to push {directory}: {name} is not covered by its completion marker ({COMPLETE_MARKER}): "
                    "it was added or replaced after the folder was written. Save the model again."
                )
    return marker


def _uploadable(name: str) -> bool:
    return name in UPLOADED_NAMES or any(fnmatch.fnmatch(name, p) for p in UPLOADED_PATTERNS)


def _remote_code_modules(directory: Path, config: dict) -> set[str]:
    """The ``.py`` files of the folder that its ``auto_map`` names, and those they import relatively."""
    from transformers.dynamic_module_utils import get_relative_import_files

    wanted: set[str] = set()
    for target in (config.get("auto_map") or {}).values():
        targets = target if isinstance(target, list | tuple) else [target]
        for item in targets:
            if isinstance(item, str) and "--" not in item and "." in item:
                wanted.add(item.split(".")[0] + ".py")
    found = set()
    for name in sorted(wanted):
        path = directory / name
        if path.is_file() and _inside(directory, path):
            found.add(name)
            try:
                found |= {Path(p).name for p in get_relative_import_files(str(path))}
            except (OSError, ValueError):
                pass
    return {name for name in found if (directory / name).is_file() and _inside(directory, directory / name)}


def _remote_code_sources(model_type: str) -> tuple[dict[str, str], dict[str, Path]]:
    """The complete ``auto_map`` of a registered family and the source files its remote code needs."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from ..models.families import FAMILIES

    family = FAMILIES[model_type]
    files: dict[str, Path] = {}
    for cls in (family.config_class(), *(family.model_class(name) for name in family.models)):
        module_file = Path(inspect.getsourcefile(cls))
        for path in (module_file, *map(Path, get_relative_import_files(module_file))):
            files[path.name] = path
    return family.auto_map(), files


def build_operations(directory: Path, readme: str) -> tuple[list[CommitOperationAdd], list[str]]:
    """The commit's additions and the names of the files left out (with the reason)."""
    config_bytes = (directory / "config.json").read_bytes()
    config = json.loads(config_bytes)
    code = _remote_code_modules(directory, config)
    operations: list[CommitOperationAdd] = []
    skipped: list[str] = []
    present: set[str] = set()
    for path in sorted(directory.iterdir()):
        name = path.name
        if path.is_symlink() and not _inside(directory, path):
            skipped.append(f"{name} (symbolic link out of the folder, not followed)")
        elif path.is_dir():
            skipped.append(f"{name}/ (folders are not uploaded)")
        elif name.startswith("."):
            skipped.append(f"{name} (hidden)")
        elif name in ("config.json", "README.md"):
            continue  # uploaded from memory below (README: a freshly generated card)
        elif _uploadable(name) or name in code:
            if name.endswith(".json"):
                try:
                    json.loads(path.read_bytes())
                except ValueError as error:
                    raise IncompleteModelError(
                        f"Refusing to push {directory}: {name} is not valid JSON ({error})"
                    ) from error
            # The resolved path: a link inside the folder is read where it points, once checked.
            operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path.resolve())))
            present.add(name)
        elif name.endswith(PICKLE_SUFFIXES) or name.startswith("rng_state") or name == "trainer_state.json":
            skipped.append(f"{name} (pickle or trainer state)")
        elif name == COMPLETE_MARKER:
            skipped.append(f"{name} (local completion marker)")
        else:
            skipped.append(f"{name} (not a model repository file)")

    model_type = config.get("model_type")
    auto_map = config.get("auto_map") or {}
    needed = {target.split(".")[0] + ".py" for target in auto_map.values() if isinstance(target, str)}
    if model_type is not None and (not auto_map or not needed <= present):
        try:
            full_map, sources = _remote_code_sources(model_type)
        except KeyError:
            full_map, sources = {}, {}
        if full_map:
            logger.info("Completing auto_map and remote-code files of %s for trust_remote_code users", directory)
            config["auto_map"] = {**auto_map, **full_map}
            config_bytes = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
            for name, source in sorted(sources.items()):
                if name not in present:
                    operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(source)))
    operations.append(CommitOperationAdd(path_in_repo="config.json", path_or_fileobj=config_bytes))
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme.encode("utf-8")))
    return operations, skipped


def _is_network_error(exc: BaseException) -> bool:
    try:
        import httpx2

        if isinstance(exc, httpx2.TransportError):
            return True
    except ImportError:  # older huggingface_hub releases use httpx / requests
        pass
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
    except ImportError:
        pass
    return isinstance(exc, ConnectionError | TimeoutError)


def push_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool = False,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    commit_description: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    allow_unmarked: bool = False,
    **card_overrides,
) -> CommitInfo:
    """Publish a MUX model folder to the Hub as one commit, with a generated model card.

    Args:
        model_dir: folder written by ``save_pretrained`` (safetensors weights and ``config.json``;
            ``training_record.json`` and tokenizer files are uploaded too and feed the card).
        repo_id: ``namespace/name`` of the Hub repository (created if missing).
        token: Hub token (default: the logged-in one / ``HF_TOKEN``).
        private: create the repository private (ignored if it exists).
        commit_message, commit_description: of the upload commit.
        revision: branch to commit to (default ``main``).
        endpoint: Hub URL (default: ``HF_ENDPOINT`` or https://huggingface.co).
        allow_unmarked: push a folder without the completion marker (one saved by a plain
            ``save_pretrained``); its weights must still parse. A marker that does not match is never overridden.
        **card_overrides: passed to :func:`render_model_card` (``license``, ``base_model``,
            ``datasets``, ``tags``, ``language``, ``model_name``, ``eval_results``, ...).

    Returns:
        The `huggingface_hub.CommitInfo` of the upload (``.commit_url``, ``.oid``).

    Raises:
        FileNotFoundError: missing folder, ``config.json`` or safetensors weights.
        IncompleteModelError: (a `ValueError`) no completion marker, files that differ from it, weights that
            do not parse, a shard or weight file leading out of the folder.
        ValueError: invalid `repo_id` or card override.
        PushError: offline mode, unreachable endpoint, or an error answered by the Hub.
    """
    directory = check_model_dir(model_dir)
    try:
        check_folder_whole(directory, allow_unmarked=allow_unmarked)
    except ValueError as error:  # a shard outside the folder (contained_file) too
        if isinstance(error, IncompleteModelError):
            raise
        raise IncompleteModelError(f"Refusing to push {directory}: {error}") from error
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"repo_id {repo_id!r} is not a valid Hub repository id: {exc}") from None
    card = render_model_card(directory, repo_id=repo_id, **card_overrides)
    operations, skipped = build_operations(directory, str(card))
    for entry in skipped:
        logger.info("Not uploaded: %s", entry)

    from .. import __version__

    api = HfApi(endpoint=endpoint, token=token, library_name="mux-plms", library_version=__version__)
    target = f"{repo_id} at {api.endpoint}"
    if constants.is_offline_mode():
        raise PushError(
            f"Cannot push {directory} to {target}: offline mode is on (HF_HUB_OFFLINE=1), which disables every "
            "Hub request. Unset HF_HUB_OFFLINE (or set it to 0) to publish."
        )
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(
            repo_url.repo_id,
            operations,
            commit_message=commit_message,
            commit_description=commit_description,
            revision=revision,
        )
    except OfflineModeIsEnabled as exc:
        raise PushError(f"Cannot push to {target}: offline mode is on (HF_HUB_OFFLINE=1). {exc}") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = " Check your token (`hf auth login` or HF_TOKEN)." if status in (401, 403) else ""
        raise PushError(f"The Hub refused the upload to {target} (HTTP {status}): {exc}.{hint}") from exc
    except Exception as exc:
        if _is_network_error(exc):
            raise PushError(
                f"Cannot reach the Hub at {api.endpoint} to push {repo_id}: {type(exc).__name__}: {exc}. "
                "Check your network connection, proxy settings and HF_ENDPOINT."
            ) from exc
        raise
    logger.debug("Pushed %s to %s (%d files): %s", directory, repo_id, len(operations), info.commit_url)
    return info


__all__ = [
    "PushError",
    "IncompleteModelError",
    "UPLOADED_NAMES",
    "build_operations",
    "check_folder_whole",
    "check_model_dir",
    "push_to_hub",
]
