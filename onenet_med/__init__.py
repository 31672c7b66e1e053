"""onenet-med: OneNet (channel-wise 1D convolution U-Nets) for medical image segmentation on MONAI."""

__version__ = "0.1.0"
