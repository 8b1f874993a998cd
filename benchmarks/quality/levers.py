"""Quality levers, measured: fine-tune one recipe on a shipped task and record quality vs training CPU time.

Every run appends one JSON line to ``--output`` (default ``benchmarks/results/quality/runs.jsonl``): its name,
every setting, the quality curve (``--eval-every``) with the training seconds at each point, and the final
metrics. Runs go through :func:`mux_plms.training.task_finetune.finetune_task` (`Trainer`, or
`DistillationTrainer` with ``--teacher``), the path of the demo.

    # the N=1 baseline, saved (it is also the logit-KD teacher of the N>1 runs)
    python benchmarks/quality/levers.py --name n1 -N 1 --steps 600 --save runs/quality/polarity_N1
    # N=2, binary Hadamard keys + RSA, warm start from MiniLM, no pre-training
    python benchmarks/quality/levers.py --name bin_rsa -N 2 --muxing binary_hadamard --steps 600
    # the same with logit KD from the N=1 model
    python benchmarks/quality/levers.py --name bin_rsa_kd -N 2 --teacher runs/quality/polarity_N1 --steps 600
    # from a pre-trained / distilled MUX checkpoint
    python benchmarks/quality/levers.py --name distilled -N 2 --init runs/distill/stage1_distill --steps 600

``benchmarks/quality/report.py`` turns the runs into the ablation table and the quality-vs-minutes plot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--task", default="polarity", choices=["polarity", "wnut16"])
    parser.add_argument("-N", "--num-instances", type=int, required=True)
    parser.add_argument("--init", default="minilm", help="'minilm' (warm start) or a MUX / vanilla folder")
    parser.add_argument("--muxing", default="binary_hadamard")
    parser.add_argument("--demuxing", default="rsa")
    parser.add_argument("--key-norm", type=float, default=None, help="gaussian_hadamard_norm (default sqrt(hidden))")
    parser.add_argument("--pooling", default="mean", choices=["first", "mean"])
    parser.add_argument("--config", nargs="*", default=[], help="extra config overrides key=value (JSON values)")
    parser.add_argument("--learn-keys", action="store_true", help="warm start with learn_muxing=True")
    parser.add_argument(
        "--key-scale",
        type=float,
        default=None,
        help="multiply the multiplexer's instance keys by this factor (N: a sum instead of a mean)",
    )
    parser.add_argument(
        "--instance-layer-from",
        type=int,
        default=None,
        help="contextual multiplexer: initialise its instance layer from this backbone layer",
    )
    parser.add_argument(
        "--curriculum",
        type=float,
        default=0.0,
        help="fraction of the steps run with one real instance per mux group (N=1 inside the N model)",
    )
    parser.add_argument(
        "--demux-init",
        default=None,
        choices=["identity"],
        help="rsa / prefix demultiplexer: start its hidden projection at the identity and scale its key "
        "projection by --demux-key-scale, so the warm-started head first reads (nearly) the backbone's states",
    )
    parser.add_argument("--demux-key-scale", type=float, default=0.1)
    parser.add_argument(
        "--head-from-init",
        action="store_true",
        help="warm start from a vanilla fine-tuned sequence classifier: its pooler and classifier become the MUX "
        "head's dense and out_proj (with --pooling first and --demux-init identity the N>1 model starts as the "
        "N=1 model applied to the mixture)",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="set every dropout probability of the model (backbone, multiplexer, head) to this value",
    )
    parser.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="binary_hadamard_epsilon: overlap of the binary keys' chunks (keys re-drawn after setting it)",
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rows", type=int, default=8, help="backbone rows per step (rows x N sequences)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--new-lr-scale", type=float, default=1.0, help="lr multiplier of the fresh modules")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--teacher", default=None, help="an N=1 fine-tuned model folder: logit KD")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--train-examples", type=int, default=3200)
    parser.add_argument("--eval-examples", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--save", default=None, help="save the fine-tuned model here")
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/quality/runs.jsonl"))
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    import mux_plms  # noqa: F401
    from mux_plms.demo import minilm_dir
    from mux_plms.training.finetune import MuxModelArguments, inspect_checkpoint, load_model
    from mux_plms.training.task_finetune import finetune_task, load_task_data

    init = str(minilm_dir()) if args.init == "minilm" else args.init
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    data = load_task_data(args.task, tokenizer, args.train_examples, args.eval_examples, args.max_length, args.seed)
    head = "sequence" if args.task == "polarity" else "token"
    n = args.num_instances
    config = json.loads((Path(init) / "config.json").read_text())
    vanilla = config.get("num_instances") is None
    model_args = MuxModelArguments(
        model_name_or_path=init,
        num_instances=n if (vanilla and n > 1) else None,
        muxing_variant=args.muxing if (vanilla and n > 1) else None,
        demuxing_variant=args.demuxing if (vanilla and n > 1) else None,
        gaussian_hadamard_norm=(args.key_norm or config["hidden_size"] ** 0.5) if (vanilla and n > 1) else None,
        sequence_pooling=args.pooling if (n > 1 and head == "sequence") else None,
        muxing_seed=args.seed if (vanilla and n > 1) else None,
    )
    info = inspect_checkpoint(model_args)
    torch.manual_seed(args.seed)
    if args.learn_keys:
        from mux_plms.training.finetune import _warm_start_classes

        labels = dict(enumerate(data.label_names))
        model = _warm_start_classes()[info.model_type][head].from_pretrained(
            init, num_instances=n, muxing_variant=args.muxing, demuxing_variant=args.demuxing,
            gaussian_hadamard_norm=model_args.gaussian_hadamard_norm, muxing_seed=args.seed, learn_muxing=True,
            num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()},
            **({"sequence_pooling": args.pooling} if head == "sequence" else {}),
        )  # fmt: skip
    else:
        model = load_model(model_args, info, head, len(data.label_names), dict(enumerate(data.label_names)))
    if args.key_scale is not None:
        with torch.no_grad():
            model.mux_base.multiplexer.instance_keys.mul_(args.key_scale)
    if args.instance_layer_from is not None:
        base = model.mux_base
        base.multiplexer.instance_layer.load_state_dict(base.encoder.layer[args.instance_layer_from].state_dict())
    if args.head_from_init:
        from safetensors.torch import load_file

        saved = load_file(str(Path(init) / "model.safetensors"))
        head_map = {
            "bert.pooler.dense.weight": model.classifier.dense.weight,
            "bert.pooler.dense.bias": model.classifier.dense.bias,
            "classifier.weight": model.classifier.out_proj.weight,
            "classifier.bias": model.classifier.out_proj.bias,
        }
        with torch.no_grad():
            for key, target in head_map.items():
                target.copy_(saved[key])
    if args.demux_init == "identity":
        demux = model.mux_base.demultiplexer
        with torch.no_grad():
            demux.hidden_proj.weight.copy_(torch.eye(demux.hidden_proj.weight.shape[0]))
            demux.hidden_proj.bias.zero_()
            demux.key_proj.weight.mul_(args.demux_key_scale)
    if args.dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = args.dropout
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            if hasattr(model.config, field):
                setattr(model.config, field, args.dropout)
    if args.epsilon is not None:
        mux = model.mux_base.multiplexer
        model.config.binary_hadamard_epsilon = args.epsilon
        with torch.no_grad():
            mux.instance_keys.copy_(mux.make_keys(mux._generator()))
    for item in args.config:
        key, value = item.split("=", 1)
        setattr(model.config, key, json.loads(value))
    teacher = None
    if args.teacher:
        auto = AutoModelForSequenceClassification if head == "sequence" else AutoModelForTokenClassification
        teacher = auto.from_pretrained(args.teacher)
    batch = args.rows * n
    started = time.time()
    result = finetune_task(model, tokenizer, data, steps=args.steps, batch_size=batch, learning_rate=args.lr,
                           seed=args.seed, output_dir=f"/tmp/levers/{args.name}", teacher=teacher,
                           distill_alpha=args.alpha, distill_temperature=args.temperature,
                           eval_every=args.eval_every, new_module_lr_scale=args.new_lr_scale,
                           single_instance_fraction=args.curriculum, desc=args.name)  # fmt: skip
    if args.save:
        from mux_plms.utils.folders import atomic_model_folder

        with atomic_model_folder(args.save) as partial:
            model.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
    from mux_plms.training.pretrain_records import read_record

    init_record = read_record(init)  # the init folder's stage entries (any training_record.json version)
    line = {
        "name": args.name,
        "task": args.task,
        "num_instances": n,
        "metric": data.metric,
        "value": result.metrics[data.metric],
        "metrics": result.metrics,
        "curve": result.curve,
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(time.time() - started, 1),
        "threads": torch.get_num_threads(),
        "init": args.init,
        "init_train_seconds": round(sum(float(e.get("train_seconds", 0)) for e in init_record), 1),
        "init_stages": [
            {
                "stage": e.get("stage"),
                "steps": e.get("steps"),
                "distillation": e.get("distillation"),
                "final_metrics": e.get("final_metrics"),
            }
            for e in init_record
        ],  # fmt: skip
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "name")},
        "model_class": type(model).__name__,
        "distillation": result.distillation,
        "final_train_loss": result.final_train_loss,
        "load": os.getloadavg()[0],
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as handle:
        handle.write(json.dumps(line) + "\n")
    print(json.dumps({k: line[k] for k in ("name", "value", "train_seconds", "curve")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
