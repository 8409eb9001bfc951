"""cnnlab: reproduce, and go beyond, a study of convolutional networks on Fashion-MNIST."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cnnlab")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
