"""train_gpt.py reads top to bottom: every section uses only the sections above it (issue 19), and the module
docstring lists them in their order."""
import ast
import re

from conftest import ROOT

SOURCE = (ROOT / "train_gpt.py").read_text()
RULE = "# " + "-" * 112


def sections() -> list[tuple[int, str]]:
    """(first line, name) of each section: the line after a full-width rule that names it in capitals."""
    lines = SOURCE.splitlines()
    return [(i + 2, lines[i + 1][2:]) for i in range(len(lines) - 1)
            if lines[i] == RULE and re.fullmatch(r"# [A-Z][A-Z -]+", lines[i + 1])]


def forward_references() -> list[str]:
    """'SECTION.user -> name (LATER SECTION)' for every top-level name used above the section that defines it."""
    starts = sections()
    section_of = lambda line: max((i for i, (first, _) in enumerate(starts) if first <= line), default=-1)
    defined = {}
    for node in ast.parse(SOURCE).body:
        names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [
            n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
        defined.update({name: section_of(node.lineno) for name in names if name not in defined})
    found = set()
    for node in ast.parse(SOURCE).body:
        here = section_of(node.lineno)
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and defined.get(n.id, -1) > here:
                found.add(f"{starts[here][1]}.{getattr(node, 'name', 'module')} -> {n.id} "
                          f"({starts[defined[n.id]][1]})")
    return sorted(found)


def test_every_section_uses_only_the_sections_above_it():
    assert len(sections()) >= 10
    assert forward_references() == []


def test_the_checker_finds_a_forward_reference(monkeypatch):
    """The check itself can fail: a RUNTIME function that calls into EVALUATION is reported."""
    broken = SOURCE.replace("def synchronize(rt: Runtime) -> None:\n",
                            "def synchronize(rt: Runtime) -> None:\n    evaluate\n", 1)
    assert broken != SOURCE
    monkeypatch.setitem(globals(), "SOURCE", broken)
    assert forward_references() == ["RUNTIME.synchronize -> evaluate (EVALUATION)"]


def test_docstring_lists_the_sections_in_their_order():
    doc = " ".join(ast.get_docstring(ast.parse(SOURCE)).split()).lower()
    at = doc.index("sections in dependency order")
    for _, name in sections():  # each named after the one before it
        at = doc.find(name.lower(), at)
        assert at >= 0, f"the module docstring's section list lacks {name} (or has it out of order)"
