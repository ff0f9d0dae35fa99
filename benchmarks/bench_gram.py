"""The layer-change Gram matrix: precision under a common offset, and time, at a ResNet stage's size.

    python benchmarks/bench_gram.py [--repeats 21]

A layer's output ``x`` (N = 16, 64 x 56 x 56 = 200,704 features) against itself plus 5 % noise, every feature
shifted by the same offset (0, 10 and 30 sigma, as post-ReLU features often are): 1 - CKA from
``similarity.gram``, from a bare uncentred float32 product (how ``gram`` worked before) and from an uncentred float64
product, against the exact value (float64 without the offset: the debiased CKA does not depend on a common offset).
Then the median time of ``gram`` and of the bare product.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fm_callback.similarity import cka, gram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, 56, 56, generator=g)
    y = x + 0.05 * torch.randn(16, 64, 56, 56, generator=g)

    def bare(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(t.shape[0], -1)
        return (flat @ flat.T).double()

    def float64(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(t.shape[0], -1).double()
        return flat @ flat.T

    exact = 1 - cka(float64(x), float64(y))
    print(f"exact 1 - CKA: {exact:.5f}")
    print("| offset | gram | bare float32 product | uncentred float64 |\n|---|---|---|---|")
    for offset in (0.0, 10.0, 30.0):
        a, b = x.double() + offset, y.double() + offset
        figures = [1 - cka(gram(a.float()), gram(b.float())), 1 - cka(bare(a.float()), bare(b.float()))]
        figures.append(1 - cka(float64(a), float64(b)))
        print(f"| {offset:g} sigma | " + " | ".join(f"{v:.5f}" for v in figures) + " |")
    a = x + 10.0
    for name, way in (("gram", gram), ("bare float32 product", bare)):
        way(a)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            way(a)
            times.append(time.perf_counter() - start)
        print(f"{name}: {1e3 * statistics.median(times):.2f} ms (median of {args.repeats})")


if __name__ == "__main__":
    main()
