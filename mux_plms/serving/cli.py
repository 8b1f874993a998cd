"""``mux-plms serve MODEL_DIR``: serve a model folder on Ray Serve (JSON over HTTP)."""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a saved (MUX or vanilla) sequence- or token-classification model folder")
    parser.add_argument("--num-replicas", type=int, default=1, help="model replicas (default 1)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--mux-rows", type=int, default=8, help="mux groups per forward batch (batch = rows x N)")
    parser.add_argument("--wait-ms", type=float, default=10.0, help="longest wait for a batch to fill (ms)")
    parser.add_argument("--ensemble", action="store_true", help="ensembled inference (forward_ensemble)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica (Ray resource)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument(
        "--no-ray", action="store_true", help="serve in-process with the built-in batcher instead of Ray Serve"
    )


def run(args: argparse.Namespace) -> int:
    from ..utils.runtime import restore_ctrl_c

    restore_ctrl_c()  # "Ctrl-C stops it" also when started from a script in the background
    if args.no_ray:
        from .batcher import MuxBatcher
        from .http import make_server
        from .loading import load_predictor

        predictor = load_predictor(args.model_dir)
        predictor.max_batch_size = args.mux_rows * predictor.num_instances
        with MuxBatcher(predictor, max_wait_s=args.wait_ms / 1000) as batcher:
            server = make_server(batcher, args.host, args.port)
            try:  # the banner inside: a Ctrl-C the moment it is read still ends cleanly
                print(f"serving {args.model_dir} (N={predictor.num_instances}) on http://{args.host}:{args.port}/")
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                server.server_close()
        return 0
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SystemExit("mux-plms serve needs Ray: pip install 'mux-plms[serve]' (or use --no-ray)") from None
    from .ray_app import build_app

    ray.init(address=args.address, include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app(
        args.model_dir,
        num_replicas=args.num_replicas,
        mux_rows=args.mux_rows,
        batch_wait_timeout_s=args.wait_ms / 1000,
        ensemble=args.ensemble,
        num_cpus=args.num_cpus,
    )
    serve.run(app, name="mux-plms", route_prefix="/")
    print(f"serving {args.model_dir} on http://{args.host}:{args.port}/ ({args.num_replicas} replica(s)); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
