"""`mux-plms push MODEL_DIR REPO_ID`: publish a model folder to the Hub with a generated model card."""

from __future__ import annotations

import argparse
import logging
import sys

from .card_cli import add_card_arguments, card_overrides_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by save_pretrained")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, namespace/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one or HF_TOKEN)")
    parser.add_argument("--commit-message", help="message of the upload commit")
    parser.add_argument("--revision", help="branch to push to (default: main)")
    parser.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument(
        "--allow-unmarked",
        action="store_true",
        help="push a folder without the mux-plms completion marker (saved by a plain save_pretrained); "
        "its safetensors weights are still checked",
    )
    add_card_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from .push import DEFAULT_COMMIT_MESSAGE, PushError, push_to_hub

    logging.basicConfig(format="%(message)s")
    logging.getLogger("mux_plms").setLevel(logging.INFO)  # our progress lines, not every HTTP request
    try:
        info = push_to_hub(
            args.model_dir,
            args.repo_id,
            token=args.token,
            private=args.private,
            commit_message=args.commit_message or DEFAULT_COMMIT_MESSAGE,
            revision=args.revision,
            endpoint=args.endpoint,
            allow_unmarked=args.allow_unmarked,
            **card_overrides_from_args(args),
        )
    except (FileNotFoundError, ValueError, PushError) as exc:
        print(f"mux-plms push: error: {exc}", file=sys.stderr)
        return 1
    print(f"Pushed {args.model_dir} to {args.repo_id}: {info.commit_url}")
    return 0
