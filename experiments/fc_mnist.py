"""Section 4.4, Figure 6: fully connected networks on MNIST, trained with each gradient.

One CSV row per run and epoch (OUT/fc_mnist.csv); a run is (width, gradient, k, seed).

    python experiments/fc_mnist.py --preset cpu --out results          # reduced, offline
    python experiments/fc_mnist.py --preset paper --data-root data --download
"""
from __future__ import annotations

import sys

import _common
import _networks

from fgexp.nn.runs import PRESETS


@_common.cli
def main(argv=None):
    return _networks.run(argv, __doc__, PRESETS["fc_mnist"], "fc_mnist")


if __name__ == "__main__":
    sys.exit(main())
