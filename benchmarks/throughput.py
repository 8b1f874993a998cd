"""Throughput and memory of MUX-BERT against vanilla BERT: a thin wrapper of `mux-plms bench`.

    python benchmarks/throughput.py --sizes base --lengths 128 --num-instances 1 2 5 10 --output-dir benchmarks/results

See benchmarks/README.md for the protocol, the cost model and the committed results.
"""

import sys

from mux_plms.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
