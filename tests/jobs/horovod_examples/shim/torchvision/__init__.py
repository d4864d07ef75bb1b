"""A minimal stand-in for torchvision, for running Horovod's examples offline.

torchvision from PyPI does not import beside the torch this project pins, and
the tests must not download MNIST. This shim offers exactly what Horovod's
``pytorch_mnist.py`` and ``pytorch_synthetic_benchmark.py`` import:

* ``datasets.MNIST``: scikit-learn's bundled 8x8 digits (1,797 images, no
  download), upscaled to 28x28 grey uint8 images; the first 1,500 are the
  training set, the rest the test set.
* ``transforms.Compose`` / ``ToTensor`` / ``Normalize`` with torchvision's meaning.
* ``models.small_cnn``: a small convolutional network for 3x224x224 images and
  1000 classes, chosen with the benchmark's own ``--model small_cnn``.

It is put on ``PYTHONPATH`` only by tests/test_horovod_examples.py and
benchmarks/horovod_compare.py; the example scripts themselves are Horovod's,
with only their ``import horovod`` lines changed.
"""

from . import datasets, models, transforms

__version__ = "0.0-hpcdl-shim"
__all__ = ["datasets", "models", "transforms"]
