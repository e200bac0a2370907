"""Train the offline feature extractor (FashionFeatureNet) on Fashion-MNIST and ship its weights.

    python scripts/train_feature_net.py                       # 8 epochs, about 10 minutes on 2 busy CPU cores
    python scripts/train_feature_net.py --epochs 1 --out /tmp/f.safetensors

Writes ``diffusion/assets/fashion_features.safetensors`` with the test accuracy, the training settings
and a tensor checksum in its metadata. Reads the data from the Debian package ``dataset-fashion-mnist``
(or ``--root`` / $ZIGSCAN_FASHION_MNIST).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zigscan.diffusion.data import load_fashion_mnist_arrays
from zigscan.diffusion.feature_net import DEFAULT_WEIGHTS, FashionFeatureNet


def to_tensor(images) -> torch.Tensor:
    return torch.from_numpy(images.copy()).float().div_(127.5).sub_(1).unsqueeze(1)  # (N, 1, 28, 28)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 pixels (padding with the background)."""
    B = x.shape[0]
    flip = torch.rand(B, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)  # (B, 1, 32, 32)
    dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()  # one shift a batch keeps this cheap
    return padded[:, :, dy : dy + 28, dx : dx + 28]


@torch.no_grad()
def accuracy(net: FashionFeatureNet, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    net.eval()
    correct = sum(
        int((net.logits(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
        for i in range(0, len(x), batch)
    )
    return correct / len(x)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", default=None, help="folder with the Fashion-MNIST idx files")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    train_x, train_y = load_fashion_mnist_arrays("train", args.root)
    test_x, test_y = load_fashion_mnist_arrays("test", args.root)
    train_x, train_y = to_tensor(train_x), torch.from_numpy(train_y)
    test_x, test_y = to_tensor(test_x), torch.from_numpy(test_y)

    net = FashionFeatureNet(width=args.width)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch
    )
    start = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(train_x), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            x, y = augment(train_x[idx], gen), train_y[idx]
            loss = F.cross_entropy(net.logits(x), y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        acc = accuracy(net, test_x, test_y)
        print(
            f"epoch {epoch + 1}/{args.epochs}  loss {total / steps_per_epoch:.4f}  test acc {acc:.4f}  "
            f"{time.time() - start:.0f}s",
            flush=True,
        )

    acc = accuracy(net, test_x, test_y)
    path = net.save(
        args.out,
        test_accuracy=f"{acc:.4f}",
        train_accuracy=f"{accuracy(net, train_x, train_y):.4f}",
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        train_seconds=f"{time.time() - start:.0f}", dataset="fashion-mnist (train split; accuracy on t10k)",
    )  # fmt: skip
    size_kb = path.stat().st_size / 1024
    print(f"test accuracy {acc:.4f}; wrote {path} ({size_kb:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
