#!/usr/bin/env python3
"""The PyTorch twin of `faceage-host bench-train`: the same net, batch, loss terms and
optimizer, timed the same way (median of N steps after one warm-up), so the two can be
compared in one run on one machine.

    pip install torch --index-url https://download.pytorch.org/whl/cpu
    python3 scripts/bench_pytorch.py --net reference --threads 2
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# The trunks of faceage-host's nets: ("conv", out, stride), ("sep", out, stride), "pool".
def plain(stages):
    return [layer for stage in stages for layer in [("conv", o, 1) for o in stage] + ["pool"]]


NETS = {
    "reference": plain([[32], [64], [128], [128]]),
    "standard": plain([[32], [48, 64], [96, 128], [160]]),
    "tiny": plain([[8], [16], [16]]),
    "separable": [("conv", 24, 2), ("sep", 48, 1), "pool", ("sep", 64, 1), ("sep", 96, 1), "pool",
                 ("sep", 128, 1), ("sep", 160, 1), "pool", ("sep", 256, 1), ("sep", 320, 1)],
}


def conv_bn_relu(c, out, kernel, stride, groups=1):
    return [nn.Conv2d(c, out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out), nn.ReLU()]


class Net(nn.Module):
    def __init__(self, trunk, bins=101):
        super().__init__()
        layers, c = [], 3
        for layer in trunk:
            if layer == "pool":
                layers.append(nn.MaxPool2d(2))
                continue
            kind, out, stride = layer
            if kind == "conv":
                layers += conv_bn_relu(c, out, 3, stride)
            else:  # depthwise 3x3, then pointwise 1x1 (MobileNet)
                layers += conv_bn_relu(c, c, 3, stride, groups=c) + conv_bn_relu(c, out, 1, 1)
            c = out
        self.trunk = nn.Sequential(*layers)
        self.age = nn.Linear(c, bins)
        self.gender = nn.Linear(c, 1)
        self.register_buffer("ages", torch.arange(bins, dtype=torch.float32))

    def forward(self, x):
        f = self.trunk(x).mean(dim=(2, 3))
        logits = self.age(f)
        age = F.softmax(logits, -1) @ self.ages
        return logits, age, self.gender(f).squeeze(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--net", default="reference", choices=NETS)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    net = Net(NETS[a.net])
    log_vars = torch.zeros(3, requires_grad=True)
    opt = torch.optim.AdamW(list(net.parameters()) + [log_vars], lr=1e-3, weight_decay=5e-4)
    x = torch.randn(a.batch, 3, a.size, a.size)
    ages = torch.tensor([(i * 7) % 90 for i in range(a.batch)], dtype=torch.float32)
    female = torch.tensor([i % 2 for i in range(a.batch)], dtype=torch.float32)
    bins = torch.arange(101, dtype=torch.float32)
    target = torch.exp(-((bins[None, :] - ages[:, None]) ** 2) / 8.0)
    target = target / target.sum(1, keepdim=True)
    times = []
    for step in range(a.steps + 1):
        t = time.perf_counter()
        logits, age, g = net(x)
        kl = (target * (target.clamp_min(1e-12).log() - F.log_softmax(logits, -1))).sum(1).mean()
        terms = [kl, (age - ages).abs().mean(), F.binary_cross_entropy_with_logits(g, female)]
        loss = sum(torch.exp(-s) * l + s for l, s in zip(terms, log_vars))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step > 0:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(
        f"pytorch {torch.__version__}: {a.net} net at {a.size}x{a.size}, batch {a.batch}, {a.threads} threads: "
        f"median {med:.3f} s/step (min {min(times):.3f}, max {max(times):.3f}) = {a.batch / med:.0f} images/s"
    )


if __name__ == "__main__":
    main()
