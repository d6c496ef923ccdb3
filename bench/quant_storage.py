"""Why quantized codes are stored one per byte: compressed bits per weight of byte containers against dense
bit-packing, with the artifact's own compressor (train_gpt.compress: brotli-11 in fixed chunks).

    python3 bench/quant_storage.py          # ~1 min on one CPU core; no GPU, no data
Codes come from train_gpt's quantizer (row_scales + quantize_matrix, rounding) at the default clip
(QUANT_CLIP_MLP row standard deviations) on Gaussian and Laplace matrices of an MLP's shape.
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def bits_per_weight(blob: bytes, n: int) -> float:
    return len(tg.compress(blob)) * 8 / n


def main():
    k = tg.KNOB_BY_ENV["QUANT_CLIP_MLP"].default
    rng = np.random.default_rng(0)
    print(f"clip k={k:g} row std devs\n| weights | bits | entropy | byte container + brotli | dense packed + brotli |\n"
          "|---|---|---|---|---|")
    for name, w in [("gaussian", rng.standard_normal((1792, 512))), ("laplace", rng.laplace(size=(1792, 512)))]:
        w = torch.from_numpy(w).float()
        for bits in (5, 6):
            q = tg.quantize_matrix(w, tg.row_scales(w, bits, k), bits)
            u = (q.numpy().astype(np.int16) + 2 ** (bits - 1) - 1).astype(np.uint8).reshape(-1)
            dense = np.packbits(((u[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1), bitorder="little")
            p = np.bincount(u) / u.size
            entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
            print(f"| {name} | {bits} | {entropy:.2f} | {bits_per_weight(u.tobytes(), u.size):.2f} | "
                  f"{bits_per_weight(dense.tobytes(), u.size):.2f} |", flush=True)


if __name__ == "__main__":
    main()
