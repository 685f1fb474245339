"""cnnkit: convolutional neural networks on images, from data to deployment."""

__version__ = "0.1.0"
