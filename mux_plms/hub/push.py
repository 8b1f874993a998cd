"""Publish a MUX model folder to the Hugging Face Hub with a generated model card.

The upload is one commit of: the folder's top-level files (safetensors weights, ``config.json``,
tokenizer files, the remote-code ``.py`` files, ``training_record.json``), a freshly generated
``README.md``, and, if the folder lacks them, the remote-code files and the complete ``auto_map``
(so ``trust_remote_code=True`` users need nothing but transformers). Nothing is written locally:
the card and any patched ``config.json`` are uploaded from memory.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .card import render_model_card

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload MUX model with mux-plms"
# Never uploaded: pickles (unsafe to load; the weights go as safetensors) and trainer state.
SKIPPED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SKIPPED_NAMES = ("README.md", "trainer_state.json")


class PushError(RuntimeError):
    """Publishing failed: offline mode, unreachable endpoint, or the Hub refused a request."""


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """Return the folder if it holds a MUX model saved with safetensors weights; raise a clear error otherwise."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"Model folder {directory} does not exist (model_dir)")
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a model folder: it has no config.json")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} is missing weight shards listed in {index.name}: {missing}")
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


def _remote_code_sources(model_type: str) -> tuple[dict[str, str], dict[str, Path]]:
    """The complete ``auto_map`` of a registered family and the source files its remote code needs."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from .._registration import FAMILIES, auto_map_for

    config_class, models = FAMILIES[model_type]
    files: dict[str, Path] = {}
    for cls in (config_class, *models.values()):
        module_file = Path(inspect.getsourcefile(cls))
        for path in (module_file, *map(Path, get_relative_import_files(module_file))):
            files[path.name] = path
    return auto_map_for(model_type), files


def build_operations(directory: Path, readme: str) -> tuple[list[CommitOperationAdd], list[str]]:
    """The commit's additions and the names of the files left out (with the reason)."""
    config_bytes = (directory / "config.json").read_bytes()
    config = json.loads(config_bytes)
    operations: list[CommitOperationAdd] = []
    skipped: list[str] = []
    present: set[str] = set()
    for path in sorted(directory.iterdir()):
        name = path.name
        if path.is_dir():
            skipped.append(f"{name}/ (folders are not uploaded)")
        elif name.startswith("."):
            skipped.append(f"{name} (hidden)")
        elif name.endswith(SKIPPED_SUFFIXES) or name.startswith("rng_state") or name in SKIPPED_NAMES:
            if name != "README.md":
                skipped.append(f"{name} (pickle or trainer state)")
        elif name != "config.json":
            operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)))
            present.add(name)

    model_type = config.get("model_type")
    auto_map = config.get("auto_map") or {}
    needed = {target.split(".")[0] + ".py" for target in auto_map.values()}
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
        **card_overrides: passed to :func:`render_model_card` (``license``, ``base_model``,
            ``datasets``, ``tags``, ``language``, ``model_name``, ``eval_results``, ...).

    Returns:
        The `huggingface_hub.CommitInfo` of the upload (``.commit_url``, ``.oid``).

    Raises:
        FileNotFoundError: missing folder, ``config.json`` or safetensors weights.
        ValueError: invalid `repo_id` or card override.
        PushError: offline mode, unreachable endpoint, or an error answered by the Hub.
    """
    directory = check_model_dir(model_dir)
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
    logger.info("Pushed %s to %s (%d files): %s", directory, repo_id, len(operations), info.commit_url)
    return info


__all__ = ["PushError", "build_operations", "check_model_dir", "push_to_hub"]
