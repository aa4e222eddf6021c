"""Data: 2-D toy distributions, image datasets, and deterministic resumable batch iterators.

Conventions: images NHWC float32 in [-1, 1], labels int32; toy samples float32 [n, 2].
"""
from flowmatch.data.images import IMAGE_DATASETS
from flowmatch.data.images import ImageDataset
from flowmatch.data.images import ImageDatasetInfo
from flowmatch.data.images import load_cifar10
from flowmatch.data.images import load_digits
from flowmatch.data.images import load_image_dataset
from flowmatch.data.images import load_image_folder
from flowmatch.data.images import load_mnist
from flowmatch.data.pipeline import DATASETS
from flowmatch.data.pipeline import BatchIterator
from flowmatch.data.pipeline import ImageSource
from flowmatch.data.pipeline import ToySource
from flowmatch.data.pipeline import make_source
from flowmatch.data.pairs import PairSource
from flowmatch.data.pairs import load_pairs
from flowmatch.data.pairs import save_pairs
from flowmatch.data.toy2d import TOY_DATASETS
from flowmatch.data.toy2d import ToySpec
from flowmatch.data.toy2d import checkerboard
from flowmatch.data.toy2d import circles
from flowmatch.data.toy2d import eight_gaussians
from flowmatch.data.toy2d import moons
from flowmatch.data.toy2d import sample_toy
from flowmatch.data.toy2d import spirals
from flowmatch.data.toy2d import swissroll
from flowmatch.data.toy2d import toy_box
from flowmatch.data.toy2d import toy_spec

__all__ = [
    "BatchIterator", "DATASETS", "IMAGE_DATASETS", "ImageDataset", "ImageDatasetInfo",
    "ImageSource", "PairSource", "TOY_DATASETS", "ToySource", "ToySpec", "checkerboard",
    "circles", "eight_gaussians", "load_cifar10", "load_digits", "load_image_dataset",
    "load_image_folder", "load_mnist", "load_pairs", "make_source", "moons", "sample_toy",
    "save_pairs", "spirals", "swissroll", "toy_box", "toy_spec",
]
