"""get_loss: class weights and ignore_index against a manual computation; 2D and 3D; label formats."""

from __future__ import annotations

import pytest
import torch

from onenet_med.engine import class_weights, get_loss
from onenet_med.metrics import segmentation_metrics

V = 255


def manual_ce(logits: torch.Tensor, label: torch.Tensor, weights: list[float]) -> float:
    """sum_i w[y_i] * -log softmax(logits_i)[y_i] / sum_i w[y_i] over non-void pixels, by Python loops."""
    logp = torch.log_softmax(logits.double(), dim=1)
    num = den = 0.0
    for index in torch.nonzero(label[:, 0] != V).tolist():
        b, *spatial = index
        y = int(label[(b, 0, *spatial)])
        num += weights[y] * -float(logp[(b, y, *spatial)])
        den += weights[y]
    return num / den


@pytest.mark.parametrize(
    "num_classes,background_weight,spatial,dtype",
    [
        (2, 0.25, (3, 4), torch.int64),
        (4, 0.25, (2, 3), torch.float32),  # float labels (as MONAI loads them)
        (3, 1.0, (3, 3), torch.uint8),
        (3, 0.25, (2, 3, 2), torch.int64),  # volumes (B, K, H, W, D)
    ],
)
def test_loss_matches_manual(num_classes, background_weight, spatial, dtype):
    gen = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(2, num_classes, *spatial, generator=gen)
    label = torch.randint(0, num_classes, (2, 1, *spatial), generator=gen)
    label[torch.rand(label.shape, generator=gen) < 0.2] = V
    weights = [background_weight] + [1.0] * (num_classes - 1)
    loss = get_loss(num_classes, background_weight)(logits, label.to(dtype))
    assert float(loss) == pytest.approx(manual_ce(logits, label, weights), rel=1e-5)
    # the CE metric is the same quantity
    if len(spatial) == 2:
        metric_ce = segmentation_metrics(logits, label, num_classes, background_weight=background_weight)["ce"]
        assert metric_ce == pytest.approx(float(loss), rel=1e-5)


def test_void_pixels_do_not_contribute_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    label = torch.tensor([[[[0, 1], [V, V]]]])
    get_loss(3)(logits, label).backward()
    assert torch.all(logits.grad[0, :, 1] == 0)
    assert torch.any(logits.grad[0, :, 0] != 0)


def test_class_weights_and_errors():
    assert class_weights(4).tolist() == [0.25, 1.0, 1.0, 1.0]
    assert class_weights(2, 0.5).tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        class_weights(1)
    loss = get_loss(3)
    with pytest.raises(ValueError, match="one channel"):
        loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="4 channels but the loss has 3 classes"):
        loss(torch.randn(1, 4, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="does not match logits"):
        loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 1, 2, 3))
    assert get_loss(3, reduction="none")(torch.randn(2, 3, 2, 2), torch.zeros(2, 1, 2, 2)).shape == (2, 2, 2)
