"""Data: the IDX format, MNIST loading, preprocessing and small synthetic sets."""

from funcnn.data.idx import IDXError as IDXError
from funcnn.data.idx import read_idx as read_idx
from funcnn.data.idx import write_idx as write_idx
from funcnn.data.mnist import MNIST as MNIST
from funcnn.data.mnist import ChecksumError as ChecksumError
from funcnn.data.mnist import load_mnist as load_mnist
from funcnn.data.preprocess import one_hot as one_hot
from funcnn.data.preprocess import random_shift as random_shift
from funcnn.data.preprocess import standardize as standardize
from funcnn.data.preprocess import train_val_split as train_val_split
from funcnn.data.synthetic import regression as regression
from funcnn.data.synthetic import spirals as spirals
from funcnn.data.synthetic import xor as xor

__all__ = [
    "MNIST",
    "ChecksumError",
    "IDXError",
    "load_mnist",
    "one_hot",
    "random_shift",
    "read_idx",
    "regression",
    "spirals",
    "standardize",
    "train_val_split",
    "write_idx",
    "xor",
]
