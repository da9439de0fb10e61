"""Section 4.5, table: ResNet18 and a small ViT on MNIST and CIFAR-10, trained with each gradient.

One CSV row per run and epoch (OUT/resnet_vit.csv); a run is (model, data set, gradient, k, seed).

    python experiments/resnet_vit.py --preset cpu --out results        # reduced, offline
    python experiments/resnet_vit.py --preset paper --data-root data --download
"""
from __future__ import annotations

import sys

import _common
import _networks

from fgexp.nn.runs import PRESETS


@_common.cli
def main(argv=None):
    return _networks.run(argv, __doc__, PRESETS["resnet_vit"], "resnet_vit")


if __name__ == "__main__":
    sys.exit(main())
