"""Why quantized values are stored one per byte: zstd-22 bits/weight for byte containers vs dense bit-packing.

    python3 bench/quant_storage.py
"""
import sys
from pathlib import Path

import numpy as np
import torch
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def bits_per_weight(blob: bytes, n: int) -> float:
    return len(zstandard.ZstdCompressor(level=22).compress(blob)) * 8 / n


def main():
    rng = np.random.default_rng(0)
    print("| weights | bits | entropy | int8 container + zstd | dense packed + zstd |\n|---|---|---|---|---|")
    for name, w in [("gaussian", rng.standard_normal((1792, 512))), ("laplace", rng.laplace(size=(1792, 512)))]:
        for bits in (5, 6):
            q, _ = tg.quantize_rows(torch.from_numpy(w).float(), bits)
            u = (q.numpy().astype(np.int16) + 2 ** (bits - 1) - 1).astype(np.uint8).reshape(-1)
            dense = np.packbits(((u[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1), bitorder="little")
            p = np.bincount(u) / u.size
            entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
            print(f"| {name} | {bits} | {entropy:.2f} | {bits_per_weight(u.tobytes(), u.size):.2f} | "
                  f"{bits_per_weight(dense.tobytes(), u.size):.2f} |")


if __name__ == "__main__":
    main()
