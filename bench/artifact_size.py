"""Projected artifact bytes (code + model) per configuration, by the computation train_gpt.py runs at start-up
(check_artifact_fits, which logs artifact_projection and records it in the run summary this bench reads): gaussian
weights of the configuration's shapes, quantized at the tightest clips (the QUANT_CLIP_* knobs, widen 1) and at the
widest the export's fit may use (x FIT_MAX_WIDEN), each sized by estimated_bytes (the codes' entropy plus scales
and fp16 tensors; no compression is run) plus the packed bytes of train_gpt.py. The fit can reach ARTIFACT_TARGET_BYTES when the widest projection is <= it; it needs no
widening when the tightest one is. Trained weights compress differently from gaussian ones: a run's
export_fit and `Total submission size` lines show the real bytes.

    python3 bench/artifact_size.py                                  # the configurations below (CPU: ~1-2 min)
    python3 bench/artifact_size.py "MLP_MULT=3 QUANT_MLP_BITS=5"    # any configurations, one argument each
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

CONFIGS = ["", "QUANT_MLP_BITS=5", "QUANT_BITS=5 QUANT_MLP_BITS=5", "NUM_KV_HEADS=4 MLP_MULT=3",
           "NUM_KV_HEADS=4 MLP_MULT=3 QUANT_MLP_BITS=5"]


def projection(env: dict) -> tuple[int, int, int, int]:
    """(parameters, tightest bytes, widest bytes, target) from check_artifact_fits' entry in the run summary."""
    a = tg.load_hyperparameters(env)
    rt = tg.Runtime(0, 1, 0, tg.torch.device("cpu"), lambda msg, console=True: None, "bench")
    model = tg.GPT(tg.ModelConfig.from_args(a))
    plan = tg.quantized_roles(tg.parameter_roles(model), a)
    try:
        tg.check_artifact_fits(model, plan, a, rt, tg.code_sizes()[0])
    except tg.ExportDoesNotFit:
        pass  # the projection was recorded before the check
    fit = rt.summary["artifact_projection"]
    return sum(p.numel() for p in model.parameters()), fit["tightest"], fit["widest"], fit["target"]


def main():
    print(f"code bytes (train_gpt.py): {tg.code_sizes()[0]:,}, included in every figure (bits/param too); "
          f"widest = clips x{tg.FIT_MAX_WIDEN:g}")
    print("| configuration (on top of the defaults) | params | tightest clips: bytes | bits/param | widest clips: bytes "
          "| bits/param | fits at the tightest | the fit can reach the target |\n|---|---|---|---|---|---|---|---|")
    for cfg in sys.argv[1:] or CONFIGS:
        params, tight, wide, target = projection(dict(item.split("=", 1) for item in cfg.split()))
        yes = lambda ok: "yes" if ok else "no"
        print(f"| {cfg or '(defaults)'} | {params / 1e6:.2f}M | {tight:,} | {tight * 8 / params:.2f} | {wide:,} | "
              f"{wide * 8 / params:.2f} | {yes(tight <= target)} | {yes(wide <= target)} (target {target:,}) |",
              flush=True)


if __name__ == "__main__":
    main()
