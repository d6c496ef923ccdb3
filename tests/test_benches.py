"""Benches cannot rot silently: every bench imports, and every train_gpt name it uses (tg.NAME) still exists
(bench/quant_storage.py once called a quantize_rows that the export rewrite had removed)."""
import ast
import importlib.util

import pytest

from conftest import ROOT, tg

BENCHES = sorted((ROOT / "bench").glob("*.py"))


@pytest.mark.parametrize("path", BENCHES, ids=[p.stem for p in BENCHES])
def test_bench_imports_and_uses_only_names_train_gpt_has(path):
    used = {node.attr for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tg"}
    assert used and not sorted(n for n in used if not hasattr(tg, n)), f"{path.name} uses missing train_gpt names"
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # module level only: main() does not run


def test_quant_storage_runs_on_the_real_quantizer(capsys):
    spec = importlib.util.spec_from_file_location("bench_quant_storage", ROOT / "bench/quant_storage.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    w = tg.torch.randn(64, 32)
    q = tg.quantize_matrix(w, tg.row_scales(w, 6, 6.0), 6)
    assert bench.bits_per_weight(q.numpy().tobytes(), q.numel()) < 8
