"""The course's vision model: a small ResNet on scikit-learn's bundled digits, upsampled to 64x64.

Why upsample: 8x8 inputs are too small for convolutions to cost anything, so no optimization would
show. At 64x64 with a width-32 ResNet and a stride-2 stem, INT8 and engine speedups are real on a
2-core CPU, and the model still trains to >= 97 % test accuracy in a few minutes.

Training is deterministic (fixed seeds, fixed split, one thread); the trained weights ship in
``optcourse/assets/digits_resnet.safetensors`` and ``python -m optcourse.models.digits`` remakes them.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import torch
from torch import nn

from optcourse.core.paths import ASSETS_DIR

WEIGHTS_PATH = ASSETS_DIR / "digits_resnet.safetensors"
IMAGE_SIZE = 64
NUM_CLASSES = 10


def load_digits_data(image_size: int = IMAGE_SIZE, seed: int = 0):
    """Return ``(x_train, y_train, x_test, y_test)`` as float32 NCHW tensors in [0, 1] and int64 labels.

    The split is stratified and fixed by ``seed`` (25 % test), so every notebook sees the same data.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=0.25, random_state=seed,
                                           stratify=labels.numpy())
    return images[idx_train], labels[idx_train], images[idx_test], labels[idx_test]


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """ResNet-style CNN: stride-2 stem, three stages (width, 2*width, 4*width), global pooling."""

    def __init__(self, width: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (eval mode, no grad) on ``x``, ``y``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / len(x)


def train_digits_resnet(epochs: int = 8, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                        width: int = 32, progress: bool = True) -> tuple[DigitsResNet, dict]:
    """Train from scratch, deterministically; return the model (eval mode) and a small report."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise reproducible on every machine, and fast enough here
    try:
        x_train, y_train, x_test, y_test = load_digits_data(seed=seed)
        model = DigitsResNet(width)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps = epochs * ((len(x_train) + batch_size - 1) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        gen = torch.Generator().manual_seed(seed)
        start = time.time()
        losses = []
        bar = tqdm(range(epochs), desc="train digits ResNet", disable=not progress)
        for _ in bar:
            model.train()
            perm = torch.randperm(len(x_train), generator=gen)
            for i in range(0, len(x_train), batch_size):
                batch = perm[i:i + batch_size]
                # small random shifts: cheap augmentation that makes the test accuracy stable
                shift = torch.randint(-3, 4, (2,), generator=gen).tolist()
                xb = torch.roll(x_train[batch], shifts=shift, dims=(2, 3))
                loss = nn.functional.cross_entropy(model(xb), y_train[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
            bar.set_postfix(loss=round(loss.item(), 4))
        report = {"epochs": epochs, "seconds": round(time.time() - start, 1),
                  "first_loss": losses[0], "last_epoch_loss": float(np.mean(losses[-len(losses) // epochs:])),
                  "test_accuracy": accuracy(model, x_test, y_test), "width": width, "seed": seed}
    finally:
        torch.set_num_threads(threads)
    return model.eval(), report


def load_digits_resnet(path: str | pathlib.Path | None = None) -> DigitsResNet:
    """Load the shipped (or given) trained weights into a fresh ``DigitsResNet`` in eval mode."""
    from safetensors.torch import load_file

    path = pathlib.Path(path or WEIGHTS_PATH)
    if not path.exists():
        raise FileNotFoundError(
            f"digits ResNet weights not found at {path}; remake them with `python -m optcourse.models.digits`")
    state = load_file(str(path))
    width = state["stem.0.weight"].shape[0]
    model = DigitsResNet(width)
    model.load_state_dict(state)
    return model.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the digits ResNet and save its weights.")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=pathlib.Path, default=WEIGHTS_PATH)
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    model, report = train_digits_resnet(epochs=args.epochs)
    save_file(model.state_dict(), str(args.out))
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
