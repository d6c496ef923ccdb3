"""Projected artifact bytes (code + zstd model) for model shapes and bit widths, on gaussian weights of each shape
(what train_gpt.py logs at start-up as artifact_projection). Trained weights compress differently from gaussian ones;
a run's `artifact_projection` and `Total submission size` lines show by how much for that run.

    python3 bench/artifact_size.py                       # the table below
    python3 bench/artifact_size.py "MLP_MULT=3 QUANT_MLP_BITS=5"   # any configurations, one argument each
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

CONFIGS = ["", "QUANT_MLP_BITS=5", "QUANT_MLP_BITS=5 QUANT_BITS=5", "NUM_KV_HEADS=4 MLP_MULT=3 QUANT_MLP_BITS=5",
           "NUM_KV_HEADS=4 MLP_MULT=3 QUANT_MLP_BITS=5 QUANT_BITS=5",
           "NUM_KV_HEADS=4 MLP_MULT=3 QUANT_MLP_BITS=5 QUANT_BITS=5 QUANT_EMBED_BITS=6"]


def projected_bytes(env: dict) -> tuple[int, int]:
    a = tg.load_hyperparameters(env)
    model = tg.GPT(tg.ModelConfig.from_args(a))
    torch.manual_seed(0)
    spread = {k: torch.randn_like(v) * 0.02 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    blob = tg.serialize_artifact(tg.quantize_state(spread, a), model.c, a.zstd_level)
    return sum(p.numel() for p in model.parameters()), len(blob) + len(Path(tg.__file__).read_bytes())


def main():
    print("| configuration (on top of the defaults) | params | projected bytes | bits/param | fits 16,000,000 |")
    print("|---|---|---|---|---|")
    for cfg in sys.argv[1:] or CONFIGS:
        params, total = projected_bytes(dict(item.split("=", 1) for item in cfg.split()))
        print(f"| {cfg or '(defaults)'} | {params / 1e6:.2f}M | {total:,} | {total * 8 / params:.2f} | "
              f"{'yes' if total <= tg.LIMIT_ARTIFACT_BYTES else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
