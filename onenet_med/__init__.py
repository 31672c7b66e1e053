"""onenet-med: OneNet (channel-wise 1D convolution U-Nets) for medical image segmentation on MONAI."""

from onenet_med.switches import switch

__version__ = "0.1.0"
__all__ = ["switch"]
