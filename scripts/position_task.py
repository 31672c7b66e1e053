#!/usr/bin/env python
"""Position-dependent segmentation: the class of a patch depends on where it lies, not on how it looks.

Two synthetic tasks (1-channel images, background noise, classes 0 background, 1 and 2), made on the fly from a
seeded generator:

- ``halves``: identical textured patches; a patch in the left half of the image is class 1, in the right half
  class 2. Every patch lies inside one half, so nothing in its own pixels or in its 16x16 block tells the
  classes apart.
- ``landmark``: one textured patch and one landmark (a bright ring) ``distance`` = 60 px to its left or right on
  the same rows; the patch is class 1 when the landmark is to its right, class 2 when to its left. The patch
  always lies where either side fits, so its absolute position says nothing: only the landmark does.

:func:`train_and_score` trains a registry network briefly on one task (Adam, the package's weighted
cross-entropy, BatchNorm statistics recomputed before evaluation) and returns the mean Dice of classes 1 and 2 on
fresh images. A network whose output pixel sees only its own 16x16 block (``onenet_ed4``) cannot beat chance
(it must give both classes the same answer: mean Dice about 0.5 at best); one with image-wide context can.
``tests/test_networks_context.py`` runs it once per network; this script runs several seeds::

    OMP_NUM_THREADS=1 python scripts/position_task.py --networks onenet_ed4 onenet_ed4_ctx --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from onenet_med.engine import get_loss  # noqa: E402
from onenet_med.engine.bn import recompute_bn_stats  # noqa: E402
from onenet_med.metrics.functional import confusion_counts, dice_from_counts  # noqa: E402
from onenet_med.networks import get_network  # noqa: E402

TASKS = ("halves", "landmark")
#: a short run that separates the networks on 2 CPU cores (see the module docstring)
DEFAULTS: dict[str, dict[str, Any]] = {
    "halves": {"steps": 200, "batch_size": 16, "learning_rate": 3e-3, "features": 8},
    "landmark": {"steps": 400, "batch_size": 16, "learning_rate": 3e-3, "features": 8},
}


def _texture(size: int) -> torch.Tensor:
    """A +-1 checkerboard of 2x2 squares: the look every patch shares."""
    r = torch.arange(size)
    return ((r.view(-1, 1) // 2 + r.view(1, -1) // 2) % 2).float() * 2 - 1


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator))


def halves_batch(
    n: int, generator: torch.Generator, height: int = 64, width: int = 64, patch: int = 12, patches: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, height, width)`` and labels ``(n, height, width)`` of the ``halves`` task."""
    image = 0.5 * torch.randn(n, 1, height, width, generator=generator)
    label = torch.zeros(n, height, width, dtype=torch.long)
    texture = _texture(patch)
    half = width // 2
    for b in range(n):
        for _ in range(patches):
            right = _randint(2, generator)
            y = _randint(height - patch + 1, generator)
            x = _randint(half - patch + 1, generator) + right * half
            noise = 0.2 * torch.randn(patch, patch, generator=generator)
            image[b, 0, y : y + patch, x : x + patch] = texture + noise
            label[b, y : y + patch, x : x + patch] = 1 + right
    return image, label


def landmark_batch(
    n: int, generator: torch.Generator, height: int = 32, width: int = 160, patch: int = 10, distance: int = 60
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, height, width)`` and labels ``(n, height, width)`` of the ``landmark`` task."""
    if width < 2 * distance + patch:
        raise ValueError(f"width must be >= 2 * distance + patch = {2 * distance + patch}, got {width}")
    image = 0.5 * torch.randn(n, 1, height, width, generator=generator)
    label = torch.zeros(n, height, width, dtype=torch.long)
    texture = _texture(patch)
    r = torch.arange(patch).float() - (patch - 1) / 2
    ring = 3.0 * ((torch.sqrt(r.view(-1, 1) ** 2 + r.view(1, -1) ** 2) - patch * 0.35).abs() < 1.2).float()
    for b in range(n):
        left = _randint(2, generator)
        x = distance + _randint(width - 2 * distance - patch + 1, generator)
        landmark = x - distance if left else x + distance
        y = _randint(height - patch + 1, generator)
        image[b, 0, y : y + patch, x : x + patch] = texture + 0.2 * torch.randn(patch, patch, generator=generator)
        label[b, y : y + patch, x : x + patch] = 1 + left
        image[b, 0, y : y + patch, landmark : landmark + patch] += ring
    return image, label


BATCHES = {"halves": halves_batch, "landmark": landmark_batch}


def mean_foreground_dice(logits: torch.Tensor, label: torch.Tensor) -> float:
    """Dice of classes 1 and 2 over all pixels of the batch, averaged."""
    counts = confusion_counts(logits.argmax(1), label, num_classes=3).sum(0)
    return float(dice_from_counts(counts)[1:].mean())


def train_and_score(
    name: str,
    task: str = "halves",
    seed: int = 0,
    steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    features: int | None = None,
    test_images: int = 64,
    **overrides: Any,
) -> dict[str, Any]:
    """Train registry network ``name`` on ``task`` from seed ``seed``; mean foreground Dice on fresh images.

    Unset settings take :data:`DEFAULTS` of the task. ``overrides`` go to the network's constructor.
    Returns ``{"network", "task", "seed", "steps", "dice", "seconds"}`` (training time in seconds).
    """
    if task not in BATCHES:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    settings = dict(DEFAULTS[task])
    for key, value in (("steps", steps), ("batch_size", batch_size), ("learning_rate", learning_rate)):
        if value is not None:
            settings[key] = value
    if features is not None:
        settings["features"] = features
    make = BATCHES[task]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = get_network(name, 1, 3, features=settings["features"], **overrides)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings["learning_rate"])
    loss_fn = get_loss(3, background_weight=0.1)
    start = time.perf_counter()
    net.train()
    for _ in range(settings["steps"]):
        image, label = make(settings["batch_size"], generator)
        loss = loss_fn(net(image), label.unsqueeze(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    recompute_bn_stats(net, [make(settings["batch_size"], generator)[0] for _ in range(4)])
    net.eval()
    image, label = make(test_images, torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        dice = mean_foreground_dice(net(image), label)
    return {"network": name, "task": task, "seed": seed, "steps": settings["steps"], "dice": dice, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["onenet_ed4", "onenet_ed4_ctx"], metavar="NAME")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, help="training steps (default: the task's)")
    parser.add_argument("--threshold", type=float, default=0.9, help="mean Dice counted as solved")
    args = parser.parse_args(argv)
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    for task in args.tasks:
        for name in args.networks:
            results = [train_and_score(name, task, seed, steps=args.steps) for seed in args.seeds]
            for r in results:
                print(f"{task:9s} {name:16s} seed {r['seed']:3d}  dice {r['dice']:.3f}  train {r['seconds']:.0f} s")
            solved = sum(r["dice"] >= args.threshold for r in results)
            print(f"{task:9s} {name:16s} solved (dice >= {args.threshold}) in {solved} of {len(results)} seeds")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
