#!/usr/bin/env python3
"""Build a Parameter Golf record folder from the train logs of one configuration run with one or more seeds, and
print a sweep's results as one table.

    python3 records/make_record.py logs/a.txt logs/b.txt logs/c.txt --name LeakyMixerTTT \\
        --author "Jane Doe" --github-id janedoe --prev-record-bpb 1.1194,1.1201,1.1189
    python3 records/make_record.py --results [logs/results.jsonl]

The first writes records/<track>/<YYYY-MM-DD>_<name>/ (README.md, submission.json, the seeds' logs, the exact
train_gpt.py that ran, packed unless --raw, requirements.txt, val_bpb.png with matplotlib) from each run's summary.
The record track (the default) is refused unless every compliance check passes; --non-record files the run in the
non-record track with the reasons. Every refusal is one line on stderr and exit code 2; records/README.md lists
them and how the statistics work. Tests call make_record() in-process. Standard library only (matplotlib optional;
packing imports the --script).
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import datetime
import hashlib
import json
import math
import os
import posixpath
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCRIPT = REPO_ROOT / "train_gpt.py"
DEFAULT_OUT_ROOT = REPO_ROOT / "records"
RECORD_TRACK, NON_RECORD_TRACK = "track_10min_16mb", "track_non_record_16mb"
TRAIN_LIMIT_S = EVAL_LIMIT_S = 600.0  # the challenge's two separate 600 s budgets on 8xH100
ARTIFACT_LIMIT_BYTES = 16_000_000  # decimal, code + compressed model
MARGIN_NATS = 0.005  # a new record must beat the old one by at least this much (nats per token) ...
P_BAR = 0.01  # ... at one-sided p below this
NOT_CONFIG = ("RUN_ID", "SEED")  # the only knobs seeds of one configuration may differ in


class RecordError(Exception):
    """A refusal the user can act on: printed as one line on stderr, exit code 2."""


# ----------------------------------------------------------------------------------------------------------------
# READING A RUN
# The summary is the contract (train_gpt.py write_summary): its keys are checked for type before anything is used,
# so a damaged or foreign file is refused by name instead of becoming a record. From the log itself come only the
# `source` line (the script's hash), `versions`, `config_defaults`, the `step:... val_bpb:` points and the
# `compliance ...` lines, which the README quotes verbatim.
# ----------------------------------------------------------------------------------------------------------------

NUMBER = (int, float)
SUMMARY_TYPES = {  # dotted key: accepted types; every key is required
    "run_id": (str,), "seed": (int,), "hardware": (str,), "config_changed": (dict,), "load_artifact": (str,),
    "scores.legal_ttt.val_loss": NUMBER, "scores.legal_ttt.val_bpb": NUMBER, "scores.roundtrip.val_bpb": NUMBER,
    "train.steps": (int,), "train.step_avg_ms": NUMBER, "bytes.model": (int,), "bytes.code": (int,),
    "bytes.total": (int,), "eval_seconds": NUMBER, "compliance": (dict,), **{"compliance." + k: v for k, v in {
        "train_seconds": NUMBER + (type(None),), "eval_seconds": NUMBER, "artifact_bytes": (int,), "scoring": (str,),
        "train_data_at_eval": (str,), "verdicts": (dict,), "hardware": (str,), "world_size": (int,),
        "train_cap_seconds": NUMBER, "scored_targets": (int,), "val_targets": (int,), "eval_max_tokens": (int,),
        "data": (str,), "val_docs_in_train": (int, type(None)), "export_fit": (str, type(None)), "record": (bool,),
        "not_record_because": (list,)}.items()},
}
SOURCE_LINE = re.compile(r"^source (\S+) sha256:([0-9a-f]{64}) bytes:(\d+)")
VAL_POINT = re.compile(r"^step:(\d+)/\S+ val_loss:\S+ val_bpb:([0-9.]+) train_time:(\d+)ms")
PACKED_HEADER = re.compile(rb"#!/usr/bin/env python3\n# train_gpt.py packed(?: from source sha256:([0-9a-f]{64}))?")
_MISSING = object()


def _get(d: dict, dotted: str, default=None):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _show(v) -> str:
    return "(absent)" if v is _MISSING else json.dumps(v)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass
class Run:
    """One seed: its log, the run's summary (`s`) and what the log adds to it."""
    path: Path
    s: dict
    sha256: str  # of the script that ran (the `source` line)
    code_bytes: int
    versions: dict
    defaults: dict | None  # the `config_defaults` line, when logged
    val_points: list  # [(train seconds, val_bpb)] of the periodic `step:... val_bpb:` lines
    compliance_lines: list[str]
    where: dict  # what each number was read from: {"summary": "line N" | "<file>", "source": "line N"}
    packed_total: int | None = None  # model bytes + the code bytes the folder holds (packed, or --raw readable)

    seed = property(lambda self: self.s["seed"])
    final = property(lambda self: self.s["scores"]["legal_ttt"])  # the run's score (score-first evaluation)
    c = property(lambda self: self.s["compliance"])
    train_seconds = property(lambda self: self.c["train_seconds"])
    config = property(lambda self: {k: v for k, v in self.s["config_changed"].items() if k not in NOT_CONFIG})
    hardware = property(lambda self: self.s["hardware"].replace("_", " "))

    @property
    def total_bytes(self) -> int:
        """Model + the code the folder holds (summaries of older runs: their logged total)."""
        return self.s["bytes"]["total"] if self.packed_total is None else self.packed_total

    @property
    def tag(self) -> str:
        """The matrices' bit widths as train_gpt.py labels them: int6, or int5-6 when MLP and attention differ."""
        bits = _get(self.s, "export.bits", {})
        return "int" + "-".join(str(b) for b in sorted({bits.get("attn", "?"), bits.get("mlp", "?")}, key=str))


def _json(text: str, what: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def read_log(path: Path) -> Run:
    """Read one log and its summary; refuse a log that is not one finished training run of train_gpt.py."""
    if not path.is_file():
        raise RecordError(f"{path}: no such log file")
    sources, summaries, versions, defaults, points, compliance = [], [], {}, None, [], []
    for lineno, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), 1):
        head, _, rest = line.partition(" ")
        try:
            if m := SOURCE_LINE.match(line):
                sources.append((lineno, m[2], int(m[3])))
            elif head == "summary_json":
                summaries.append((f"line {lineno}", _json(rest, head)))
            elif head == "versions":  # key:value tokens
                versions = dict(tok.split(":", 1) for tok in rest.split() if ":" in tok and not tok.startswith(":"))
            elif head == "config_defaults":
                defaults = _json(rest, head)
            elif m := VAL_POINT.match(line):
                points.append((int(m[3]) / 1000, float(m[2])))
            elif head in ("compliance", "compliance_verdict"):
                compliance.append(line)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            shown = line if len(line) <= 100 else line[:100] + "..."
            raise RecordError(f"{path}: line {lineno} is malformed ({type(e).__name__}: {e}): {shown}") from None
    if not sources:
        raise RecordError(f"{path}: no `source train_gpt.py sha256:... bytes:...` line; is this a log written by "
                          "train_gpt.py?")
    if len(sources) > 1:
        raise RecordError(f"{path}: holds {len(sources)} runs (one `source` line each); give the log of a single run")
    sidecar = path.with_name(path.name.rsplit(".", 1)[0] + ".summary.json")
    if not summaries and sidecar.is_file():
        try:
            summaries.append((sidecar.name, _json(sidecar.read_text(), sidecar.name)))
        except ValueError as e:
            raise RecordError(f"{sidecar}: malformed ({e})") from None
    if not summaries:
        raise RecordError(f"{path}: no `summary_json` line and no {sidecar.name} beside it: the run did not finish, "
                          "or its train_gpt.py predates run summaries; rerun with the current train_gpt.py")
    (where, s), (lineno, sha, size) = summaries[-1], sources[0]
    if s.get("load_artifact"):
        raise RecordError(f"{path}: an evaluation of LOAD_ARTIFACT={s['load_artifact']} (it trained nothing, and its "
                          "seed is the evaluation's): not a seed of a record; give the logs of the training runs")
    wrong = [k for k, types in SUMMARY_TYPES.items() if not _is(_get(s, k, _MISSING), types)]
    if wrong:
        raise RecordError(f"{path}: the run's summary ({where}) lacks or mistypes " + ", ".join(
            f"{k} ({'missing' if _get(s, k, _MISSING) is _MISSING else json.dumps(_get(s, k))[:40]})" for k in wrong))
    return Run(path, s, sha, size, versions, defaults, points, compliance,
               {"summary": where, "source": f"line {lineno}"})


def _is(value, types: tuple) -> bool:
    """isinstance, where a bool is not a number (JSON true is not 1)."""
    return isinstance(value, types) and (not isinstance(value, bool) or bool in types)


def check_consistent(runs: list[Run]) -> None:
    """Refuse logs of different configurations (naming every differing knob), of different scripts, and the same
    seed twice."""
    first = runs[0]
    for run in runs[1:]:
        a, b = first.config, run.config
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k, _MISSING) != b.get(k, _MISSING)]
        if diff:
            raise RecordError(f"logs disagree on the configuration: " + ", ".join(
                f"{k}={_show(a.get(k, _MISSING))} in {first.path} but {_show(b.get(k, _MISSING))} in {run.path}"
                for k in diff) + " (seeds of one configuration differ only in SEED and RUN_ID)")
        if run.sha256 != first.sha256:
            raise RecordError(f"logs disagree on the script: {first.path} ran train_gpt.py sha256:"
                              f"{first.sha256[:12]}... but {run.path} ran sha256:{run.sha256[:12]}...")
    seen: dict[int, Run] = {}
    for run in runs:
        if run.seed in seen:
            raise RecordError(f"duplicate seed {run.seed}: in both {seen[run.seed].path} and {run.path}")
        seen[run.seed] = run


def check_script(script: Path, runs: list[Run]) -> str:
    """Refuse a --script whose sha256 is not the one the logs ran (or, a record's own packed script, whose header
    names another source); return the hash the logs ran."""
    if not script.is_file():
        raise RecordError(f"--script {script}: no such file (give the exact train_gpt.py that wrote the logs)")
    data, logged = script.read_bytes(), runs[0].sha256
    header = PACKED_HEADER.match(data)
    if sha256_bytes(data) != logged and not (header and header[1] and header[1].decode() == logged):
        raise RecordError(f"--script {script} has sha256:{sha256_bytes(data)[:12]}... but the logs ran sha256:"
                          f"{logged[:12]}...; pass the exact file that ran (e.g. git show <commit>:train_gpt.py > "
                          "/tmp/train_gpt.py)")
    return logged


# ----------------------------------------------------------------------------------------------------------------
# THE SCRIPT THE FOLDER HOLDS, and REQUIREMENTS
# The packing functions live in train_gpt.py (pack_source, unpack_source, PACKED_MARKER); the --script is imported
# only when it packs (a script that defines pack_source, unless --raw), so the rest stays standard-library only.
# ----------------------------------------------------------------------------------------------------------------

def load_packer(script: Path):
    """Import the --script as a module (its `if __name__ == "__main__"` block does not run) for its packing
    functions; refuse when it cannot be imported or lacks them."""
    import types
    name = f"_make_record_script_{os.getpid()}"
    module = types.ModuleType(name)
    module.__file__ = str(script)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        exec(compile(script.read_bytes(), str(script), "exec"), module.__dict__)
    except (Exception, SystemExit) as e:
        raise RecordError(f"packing: importing --script {script} failed ({type(e).__name__}: {e}); it needs its own "
                          "imports (torch, numpy) installed") from None
    finally:
        sys.modules.pop(name, None)
    lacking = [n for n in ("pack_source", "unpack_source", "PACKED_MARKER") if not hasattr(module, n)]
    if lacking:
        raise RecordError(f"packing: --script {script} has no {', '.join(lacking)}; only a train_gpt.py with the "
                          "packing functions can be packed (--raw copies the script as it ran)")
    return module


def ship_script(script: Path, script_hash: str, runs: list[Run], packed: bool, warn) -> dict:
    """The folder's train_gpt.py, and each seed's artifact counted as model bytes + that file (run.packed_total).

    Returns {file (its bytes), code (what it runs: its imports make requirements.txt), unpacked (the readable size;
    None for the readable script), about (the README's paragraph)}. Packed (the form the runs' fit counted): the
    script's pack_source, checked to unpack to its code (train_gpt's packing drops comments and docstrings:
    runnable_source). A script that was itself packed when it ran is kept byte for byte; so is a record's own packed
    script (its header names the source the logs ran), whose readable size comes from the runs' summaries. Readable
    (--raw): the exact script, which the runs' fit did not count.
    """
    ran = script.read_bytes()
    if not packed:
        for run in runs:
            b = run.s["bytes"]
            if "source" in b:  # summaries that have it logged the packed code: count the readable file instead
                run.packed_total = b["model"] + b["source"]
                if run.packed_total > ARTIFACT_LIMIT_BYTES:
                    warn(f"{run.path}: with the readable script the artifact is {run.packed_total} bytes, over "
                         "16,000,000; drop --raw")
        return {"file": ran, "code": ran, "unpacked": None, "about": f"`train_gpt.py` in this folder is the exact "
                f"script that ran: sha256 `{script_hash}`, {runs[0].code_bytes:,} bytes (the hash in every log's "
                "`source` line)."}
    packer = load_packer(script)
    try:
        already = ran.startswith(packer.PACKED_MARKER)
        file = ran if already else packer.pack_source(ran)
        code = packer.unpack_source(file)
    except Exception as e:
        raise RecordError(f"packing: the packing functions of --script {script} failed ({type(e).__name__}: "
                          f"{e})") from None
    if not isinstance(file, bytes) or not file.startswith(packer.PACKED_MARKER):
        raise RecordError(f"packing: pack_source of --script {script} did not return a packed script (bytes "
                          "starting with PACKED_MARKER)")
    if not already and code != getattr(packer, "runnable_source", lambda b: b)(ran):
        raise RecordError(f"packing: unpack_source(pack_source(script)) is not the script that ran "
                          f"(sha256:{sha256_bytes(code)[:12]}... instead of sha256:{sha256_bytes(ran)[:12]}...); "
                          "the packing functions of --script are broken")
    own = already and sha256_bytes(ran) != script_hash  # a record's own packed script, not what ran
    unpacked = (runs[0].s["bytes"].get("source") or len(code)) if own else len(code if already else ran)
    for run in runs:
        logged = run.s["bytes"]["code"] if "source" in run.s["bytes"] else None  # runs count their packed form
        if logged is not None and logged != len(file):
            warn(f"{run.path} logged packed code of {logged} bytes but the packed file is {len(file)} bytes "
                 "(another brotli version?); the record counts the file it holds")
        run.packed_total = run.s["bytes"]["model"] + len(file)
    if already and not own:
        about = (f"`train_gpt.py` in this folder is the exact script that ran, which was already packed: sha256 "
                 f"`{script_hash}`; the source it carries: sha256 `{sha256_bytes(code)}`, {unpacked:,} bytes.")
    else:
        about = (f"`train_gpt.py` in this folder is the **packed** form of the script that ran (self-extracting, "
                 "comments and docstrings dropped; make_record checked that `unpack_source` gives the script's "
                 f"code): sha256 `{sha256_bytes(file)}`, {len(file):,} bytes; the source that ran: sha256 "
                 f"`{script_hash}`, {unpacked:,} bytes (the hash in every log's `source` line). The artifact bytes "
                 "count the packed file.")
    return {"file": file, "code": file + b"\n" + code, "unpacked": unpacked, "about": about}


BASE_PACKAGES = {"torch", "numpy"}  # what every record's environment has


def script_requirements(code: bytes, requirements: Path) -> list[str]:
    """The lines of the repository's requirements.txt (comments dropped) for packages the code imports (a packed
    script's wrapper plus the code it carries), other than torch and numpy: a record lists only what it needs."""
    if not requirements.is_file():
        return []
    tree = ast.parse(code)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    norm = lambda name: re.sub(r"[-_.]+", "_", name).lower()  # noqa: E731
    wanted = {norm(m) for m in imported} - BASE_PACKAGES
    out = []
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if m and not line.startswith("-") and norm(m.group(0)) in wanted:
            out.append(line)
    return out


# ----------------------------------------------------------------------------------------------------------------
# COMPLIANCE
# Each check: the verdict train_gpt.py logged (compliance "verdicts") and this tool's re-check of the logged
# numbers; a check holds for a seed when both agree on PASS (SKIP, not measured, never holds). The record track
# needs every check to hold.
# ----------------------------------------------------------------------------------------------------------------

def _eval_why(c: dict, r: Run) -> str:
    projected = c.get("eval_projection_seconds")
    if c["eval_seconds"] <= EVAL_LIMIT_S and projected is not None:
        return f"evaluated in {c['eval_seconds']:.1f} s, projected to {projected:.1f} s for the full split on 8 GPUs"
    return f"evaluated in {c['eval_seconds']:.1f} s, over the 600 s limit"


# name: the verdict's name in compliance (the key re-checked for export_fit, which has no verdict); flag: the
# submission.json compliance key (None: a record requirement without a boolean, and without a verdict);
# ok(compliance, run): the re-check of the logged numbers; why(compliance, run): why it fails, e.g. "ran on 1xcpu,
# a record needs 8xH100"
Check = collections.namedtuple("Check", "name flag ok why")
CHECKS = (
    Check("train_time", "train_under_600s",
          lambda c, r: c["train_seconds"] is not None and c["train_seconds"] <= TRAIN_LIMIT_S,
          lambda c, r: "train_seconds unknown" if c["train_seconds"] is None else
          f"trained {c['train_seconds']:.1f} s, over the 600 s limit"),
    Check("eval_time", "eval_under_600s", lambda c, r: max(c["eval_seconds"], c.get("eval_projection_seconds") or 0)
          <= EVAL_LIMIT_S, _eval_why),
    Check("artifact_size", "artifact_under_16mb",
          lambda c, r: max(c["artifact_bytes"], r.total_bytes) <= ARTIFACT_LIMIT_BYTES,
          lambda c, r: f"{max(c['artifact_bytes'], r.total_bytes)} bytes, over the 16000000-byte limit"),
    Check("scoring", "no_hashed_ngram_cache",
          lambda c, r: c["scoring"] == "normalized" or r.config.get("MIXER_HEAD") == "none",
          lambda c, r: f"scoring {c['scoring']}, not a normalized distribution over the vocabulary (C1/C2)"),
    Check("train_data_at_eval", "no_train_data_at_eval", lambda c, r: c["train_data_at_eval"] == "no",
          lambda c, r: f"train_data_at_eval {c['train_data_at_eval']}: training data read at evaluation"),
    Check("hardware", "eight_h100", lambda c, r: c["hardware"].startswith("8x") and "H100" in c["hardware"],
          lambda c, r: f"ran on {c['hardware']}, a record needs 8xH100"),
    Check("train_clock", "train_clock_capped", lambda c, r: 0 < c["train_cap_seconds"] <= TRAIN_LIMIT_S,
          lambda c, r: f"MAX_WALLCLOCK_SECONDS={c['train_cap_seconds']:g}"
          + (" (no cap)" if c["train_cap_seconds"] <= 0 else ", over 600 s")),
    Check("full_validation", "full_validation",
          lambda c, r: c["eval_max_tokens"] == 0 and c["scored_targets"] == c["val_targets"],
          lambda c, r: f"scored {c['scored_targets']} of {c['val_targets']} targets"
          + (f" (EVAL_MAX_TOKENS={c['eval_max_tokens']})" if c["eval_max_tokens"] else "")),
    Check("data", "challenge_fineweb", lambda c, r: c["data"].startswith("fineweb verified"),
          lambda c, r: c["data"] or "(empty)"),
    Check("val_overlap", "no_val_in_train", lambda c, r: c["val_docs_in_train"] == 0,
          lambda c, r: "val_docs_in_train unknown (the data's provenance record did not check it)"
          if c["val_docs_in_train"] is None else
          f"{c['val_docs_in_train']} validation documents are also training documents"),
    Check("export_fit", None, lambda c, r: c["export_fit"] == "yes",
          lambda c, r: f"export_fit {c['export_fit']} (the export did not fit the byte target)"),
)
FLAG_ORDER = ("no_hashed_ngram_cache", "score_first_ttt", "three_seeds", "train_under_600s", "eval_under_600s",
              "artifact_under_16mb", "no_train_data_at_eval", "eight_h100", "train_clock_capped", "full_validation",
              "challenge_fineweb", "no_val_in_train")


def _seed_failures(run: Run) -> list[tuple[str, str]]:
    """(check name, reason) for every check this seed fails."""
    c, out = run.c, []
    logged_reasons = [x for x in c["not_record_because"] if isinstance(x, str)]
    for check in CHECKS:
        verdict = c["verdicts"].get(check.name, "(missing)") if check.flag else None
        if not check.ok(c, run):
            out.append((check.name, check.why(c, run) + (" (though the log says PASS)" if verdict == "PASS" else "")))
        elif verdict not in ("PASS", None):  # the numbers hold, the log's verdict does not: the stricter one wins
            said = next((x.partition(":")[2].strip() for x in logged_reasons if x.startswith(check.name + ":")), "")
            out.append((check.name, f"the log's verdict is {verdict}" + (f": {said}" if said else "")))
    known = {check.name for check in CHECKS}
    out += [(name, f"the log's verdict is {v}") for name, v in sorted(c["verdicts"].items())
            if name not in known and v != "PASS"]
    if not out and c["record"] is not True:
        out.append(("record", "the log says record:false" + (f" ({'; '.join(logged_reasons)})" if logged_reasons
                                                              else "")))
    return out


def _flag_cell(flag: str, held: bool, reasons: list[str]) -> str:
    """yes, no, or "not measured" when every reason its check failed is a SKIP verdict or an unknown number (not
    measured is not failed: a reader takes "no" for "validation documents were found in training")."""
    name = next((check.name for check in CHECKS if check.flag == flag), None)
    mine = [r for r in reasons if r.split(":")[0].split(" (")[0] == name]
    unmeasured = mine and all("verdict is SKIP" in r or " unknown" in r for r in mine)
    return "yes" if held else "not measured" if unmeasured else "no"


def check_compliance(runs: list[Run]) -> tuple[dict[str, bool], list[str]]:
    """Per-check booleans over all seeds (submission.json's compliance object) and why the run is not a record.

    Each reason is "<check>: <why>" once per distinct why, as "<check> (seed S): <why>" when not every seed has
    it. score_first_ttt holds by construction: the score is train_gpt.py's score-first pass (legal_ttt), which
    scores each chunk before it adapts to it.
    """
    grouped: dict[tuple[str, str], list[int]] = {}  # (check, why): the seeds that fail it so
    for run in runs:
        for key in _seed_failures(run):
            grouped.setdefault(key, []).append(run.seed)
    failed = {name for name, _ in grouped}
    flags = {"score_first_ttt": True, "three_seeds": len(runs) >= 3}
    flags |= {check.flag: check.name not in failed for check in CHECKS if check.flag}
    reasons = []
    for (name, why), seeds in grouped.items():
        where = "" if len(seeds) == len(runs) else (
            f" (seed {seeds[0]})" if len(seeds) == 1 else f" (seeds {', '.join(map(str, seeds))})")
        reasons.append(f"{name}{where}: {why}")
    return {k: flags[k] for k in FLAG_ORDER}, reasons


# ----------------------------------------------------------------------------------------------------------------
# STATISTICS
# Student-t tail via the regularized incomplete beta function (Lentz continued fraction, Numerical Recipes 6.4),
# so the tool needs no scipy; tests compare it with scipy.stats.t where scipy is installed.
# ----------------------------------------------------------------------------------------------------------------

def betainc_regularized(a: float, b: float, x: float, one_minus_x: float | None = None) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1; pass one_minus_x when it is known more precisely than 1 - x."""
    y = 1.0 - x if one_minus_x is None else one_minus_x
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y))
    flip = x >= (a + 1.0) / (a + b + 2.0)  # the fraction converges fast below this: I_x(a, b) = 1 - I_y(b, a)
    if flip:
        a, b, x = b, a, y
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            delta = c * d
            h *= delta
        if abs(delta - 1.0) < eps:
            return 1.0 - front * h / a if flip else front * h / a
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df > 0 degrees of freedom (df need not be an integer)."""
    if math.isnan(t) or not df > 0:
        raise ValueError(f"student_t_sf needs a number t and df > 0 (got t={t}, df={df})")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    # P(|T| > |t|) = I_{df/(df+t^2)}(df/2, 1/2)
    two_sided = betainc_regularized(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))
    return 0.5 * two_sided if t >= 0 else 1.0 - 0.5 * two_sided


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t); computed from the lower tail directly so small probabilities keep their digits."""
    return student_t_sf(-t, df)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the std is None for a single value."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def welch_one_sided(new: list[float], prev: list[float], margin: float) -> tuple[float, float, float]:
    """One-sided Welch t-test that the new mean is lower than the previous one by more than margin.

    H0: mean(prev) - mean(new) <= margin. t = ((mean_prev - mean_new) - margin) / sqrt(s_prev^2/n_prev +
    s_new^2/n_new) with sample variances, Welch-Satterthwaite degrees of freedom, p = P(T_df > t). Returns
    (t, df, p). With both variances zero, t is +-inf (or 0 at exactly the margin) and df is n_new + n_prev - 2.
    """
    if len(new) < 2 or len(prev) < 2:
        raise ValueError(f"Welch's test needs at least 2 values on each side (got {len(new)} new, {len(prev)} prev)")
    m_new, s_new = mean_std(new)
    m_prev, s_prev = mean_std(prev)
    a, b = s_new ** 2 / len(new), s_prev ** 2 / len(prev)
    diff = (m_prev - m_new) - margin
    if a + b == 0.0:
        t = math.copysign(math.inf, diff) if diff else 0.0
        df = float(len(new) + len(prev) - 2)
    else:
        t = diff / math.sqrt(a + b)
        df = (a + b) ** 2 / (a * a / (len(new) - 1) + b * b / (len(prev) - 1))
    return t, df, student_t_sf(t, df)


def significance(runs: list[Run], prev_bpb: list[float] | None, prev_loss: list[float] | None) -> dict | None:
    """The Welch test against a previous record's per-seed val_loss (nats) or val_bpb, or None when none given.

    For val_bpb the 0.005-nat margin is converted with this run's bpb-per-nat ratio, mean(val_bpb / val_loss)
    over our seeds (the ratio is tokens/bytes/ln 2 of the validation set, the same for every seed); delta_nats
    divides the bpb difference by the same ratio.
    """
    if prev_bpb is None and prev_loss is None:
        return None
    if prev_bpb is not None and prev_loss is not None:
        raise RecordError("give --prev-record-bpb or --prev-record-loss, not both")
    prev = prev_bpb if prev_bpb is not None else prev_loss
    if len(runs) < 2 or len(prev) < 2:
        raise RecordError(f"the significance test needs at least 2 seeds on each side (this record has {len(runs)}, "
                          f"the previous record {len(prev)} values)")
    if prev_bpb is not None:
        metric, new = "val_bpb", [r.final["val_bpb"] for r in runs]
        per_nat = math.fsum(r.final["val_bpb"] / r.final["val_loss"] for r in runs) / len(runs)
    else:
        metric, new, per_nat = "val_loss", [r.final["val_loss"] for r in runs], 1.0
    margin = MARGIN_NATS * per_nat
    t, df, p = welch_one_sided(new, prev, margin)
    delta = (mean_std(prev)[0] - mean_std(new)[0]) / per_nat
    return {"p_value": p, "delta_nats": round(delta, 8), "passes_p01": p < P_BAR, "compared": metric,
            "prev_values": list(prev), "margin_nats": MARGIN_NATS, "margin": margin, "bpb_per_nat": per_nat,
            "t": t, "df": df}


# ----------------------------------------------------------------------------------------------------------------
# DESCRIBING THE RUN
# Built from the summary only, generically: the knobs that differ from the defaults are listed as they are (no
# sentence keyed on a knob name, which goes stale when knobs are renamed), the export from the fit's own record.
# ----------------------------------------------------------------------------------------------------------------

def _env_value(v) -> str:
    """A config value as the env string train_gpt.py parses back to the same value."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, list):
        return ",".join(_env_value(x) for x in v)
    return repr(v) if isinstance(v, float) else str(v)


def technique_summary(run: Run) -> str:
    """One line for submission.json, e.g. 'gptq int6 export (embedding int8), multi n-gram mixer, score-first TTT;
    12 knobs changed from the defaults'."""
    e, res = run.s.get("export", {}), run.s.get("result", {})
    parts = [f"{e.get('method', '?')} {run.tag} export (embedding int{_get(e, 'bits.embed', '?')})"] if e else []
    head = res.get("head")
    parts.append("the network alone" if head == "none" else f"{head} n-gram mixer" if head else "score-first eval")
    parts.append("score-first TTT" if res.get("ttt") else "no TTT")
    return ", ".join(parts) + f"; {len(run.config)} knobs changed from the defaults"


def portable_config(cfg: dict, repo_root: Path, defaults: dict | None) -> tuple[dict, list[str]]:
    """The config with every *_PATH value made relative to the repository root (machine-absolute paths do not run
    elsewhere), and one note per path that had to be replaced. A path outside the repository becomes
    ./data/datasets/<folder> or ./data/tokenizers/<file> (where data/prepare.py puts them), and is left out when
    that is the script's default."""
    root = posixpath.normpath(Path(repo_root).resolve().as_posix())
    homes = {"DATA_PATH": "./data/datasets", "TOKENIZER_PATH": "./data/tokenizers"}
    out, notes = dict(cfg), []
    for key, value in cfg.items():
        if not (key.endswith("_PATH") and isinstance(value, str) and value.strip()):
            continue
        path = posixpath.normpath(value)
        if posixpath.isabs(path) and (path == root or path.startswith(root.rstrip("/") + "/")):
            out[key] = "./" + posixpath.relpath(path, root) if path != root else "."
        elif posixpath.isabs(path) or path == ".." or path.startswith("../"):
            name = posixpath.basename(path)
            if key in homes and name not in ("", ".", ".."):
                out[key] = f"{homes[key]}/{name}"
                notes.append(f"The runs read {key}={value}, outside the repository; the command uses {out[key]}, "
                             "where data/prepare.py puts it: put the same files there.")
            else:
                notes.append(f"{key}={value} is a path on the machine that ran the logs, outside the repository.")
        if defaults and posixpath.normpath(out[key]) == posixpath.normpath(str(defaults.get(key))):
            del out[key]
    return out, notes


def command_lines(cfg: dict, seeds: list[int], world: int, script: str) -> str:
    """The exact launch command, run from the repository root: every knob the runs changed from the script's
    defaults, as the runs resolved it (a PRESET is spelled out, so the command does not depend on its definition),
    SEED from the loop, RUN_ID left out (it only names the log)."""
    env = [f"{k}={shlex.quote(_env_value(cfg[k]))}" for k in sorted(cfg) if k not in ("PRESET", *NOT_CONFIG)]
    launch = f"python3 {script}" if world == 1 else f"torchrun --standalone --nproc_per_node={world} {script}"
    if len(seeds) == 1:
        return " \\\n".join(env + [f"SEED={seeds[0]}", launch])
    return f"for SEED in {' '.join(map(str, seeds))}; do\n  " + " \\\n  ".join(env + ["SEED=$SEED", launch]) + "\ndone"


def data_section(cfg: dict, defaults: dict | None, repo_root: Path) -> list[str]:
    """How the data was built: the data/prepare.py command and the provenance.json it wrote next to the shards (where
    the runs read it, else where the command reads it)."""
    ran = cfg.get("DATA_PATH") or (defaults or {}).get("DATA_PATH") or "./data/datasets/fineweb10B_sp1024"
    here = portable_config({"DATA_PATH": ran}, repo_root, None)[0]["DATA_PATH"]
    record = next((Path(repo_root) / d / "provenance.json" for d in (ran, here)
                   if (Path(repo_root) / d / "provenance.json").is_file()), None)
    if record is None:
        return [f"No provenance.json was found at `{here}` when this folder was written, so how the data was built is "
                "not recorded.", ""]
    p = json.loads(record.read_text())
    files, src = p.get("files", {}), p.get("source")
    n_train, kind = sum(name.startswith("fineweb_train_") for name in files), p.get("kind")
    sources, tok = " ".join(src if isinstance(src, list) else [str(src)]), p.get("tokenizer", {})
    cmd = {"sample": "python3 data/prepare.py sample`",
           "fineweb": f"python3 data/prepare.py fineweb --variant {p.get('variant')} --train-shards {n_train}`"}.get(
        kind, f"python3 data/prepare.py corpus {sources} --out <DATA_PATH> --tokenizer <TOKENIZER_PATH>` (other "
              "options it took are not recorded)")
    return [f"Built with `{cmd}. Its `provenance.json` (sha256 `{sha256_bytes(record.read_bytes())}`, read when "
            f"this folder was written) says: kind {kind}, source {json.dumps(src)}, {len(files)} shard files "
            f"({sum(f.get('bytes', 0) for f in files.values()):,} bytes), tokenizer sha256 `{tok.get('sha256')}`, "
            f"validation documents in train: {p.get('val_docs_in_train')}.", ""]


# ----------------------------------------------------------------------------------------------------------------
# WRITING THE FOLDER
# Everything is checked before anything is written; the folder is built in a temporary sibling and moved into
# place at the end, so a refusal or a crash never leaves half a record (and --force replaces it whole).
# ----------------------------------------------------------------------------------------------------------------

def _fmt(v, spec: str = ".8f") -> str:
    return "n/a" if v is None else format(v, spec)


def plot_val_bpb(runs: list[Run], path: Path) -> str | None:
    """val_bpb against training time per seed (periodic val lines, then the final score); None when written, else
    why not (no matplotlib, or nothing to draw)."""
    points = [(r, r.val_points, r.train_seconds) for r in runs]
    if not any(pts or t is not None for _, pts, t in points):
        return "Plot skipped: nothing to draw (no periodic val_bpb lines and no training time in the logs)."
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("Plot skipped: matplotlib is not installed (pip install matplotlib, then rerun with --force). The "
                "points are the `step:... val_bpb:...` lines of the logs.")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for run, pts, train_s in points:
        (line,) = ax.plot([t for t, _ in pts], [b for _, b in pts], marker=".", label=f"seed {run.seed}")
        if train_s is not None:
            ax.scatter([train_s], [run.final["val_bpb"]], marker="*", s=140, color=line.get_color(), zorder=3)
    ax.scatter([], [], marker="*", s=140, color="grey", label="final score (score-first pass), at train end")
    ax.set(xlabel="training time (s)", ylabel="val_bpb", title="val_bpb against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def build_submission(runs: list[Run], meta: dict, flags: dict, sig: dict | None, ship: dict) -> dict:
    """submission.json: the means and sample stds of the score-first pass, and each seed's numbers."""
    (loss, loss_std), (bpb, bpb_std) = (mean_std([r.final[k] for r in runs]) for k in ("val_loss", "val_bpb"))
    round8, cuda = (lambda v: None if v is None else round(v, 8)), runs[0].versions.get("cuda")
    sub = dict(meta) | {
        "val_loss": round8(loss), "val_bpb": round8(bpb), "val_loss_std": round8(loss_std),
        "val_bpb_std": round8(bpb_std), "bytes_total": max(r.total_bytes for r in runs),
        "bytes_code": len(ship["file"])}  # the file the folder holds, which bytes_total counts
    if ship["unpacked"] is not None:
        sub["bytes_code_unpacked"] = ship["unpacked"]
    sub |= {
        "seeds": [r.seed for r in runs],
        "seed_results": {str(r.seed): {
            "val_loss": r.final["val_loss"], "val_bpb": r.final["val_bpb"], "artifact_bytes": r.total_bytes,
            "steps": r.s["train"]["steps"], "step_avg_ms": round(r.s["train"]["step_avg_ms"], 2),
            "train_time_s": r.train_seconds, "eval_time_s": r.s["eval_seconds"]} for r in runs},
        "quantization": runs[0].tag, "hardware": " / ".join(sorted({r.hardware for r in runs})),
        "pytorch_version": runs[0].s.get("torch") or runs[0].versions.get("torch"),
        "cuda_version": None if cuda in (None, "none") else cuda,
        "technique_summary": technique_summary(runs[0]), "compliance": flags}
    if sig is not None:
        sub["significance"] = sig
    return sub


EXPORT_KEYS = ("method", "k_attn", "k_mlp", "k_embed", "widen", "bytes", "target", "tries", "seconds")
PER_SEED = {"val_bpb": ".8f", "val_loss": ".8f", "artifact_bytes": "d", "train_time_s": ".2f", "eval_time_s": ".2f",
            "steps": "d", "step_avg_ms": ".2f"}  # submission.json's seed_results as the README's table shows them


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(str, r)) + " |"
                                                                        for r in rows]


def build_readme(runs: list[Run], sub: dict, reasons: list[str], plot_note: str | None, ship: dict,
                 requirements: list[str], repo_root: Path) -> str:
    first, n, sig = runs[0], len(runs), sub.get("significance")
    cfg, notes = portable_config(first.config, repo_root, first.defaults)
    command = command_lines(cfg, sub["seeds"], first.c["world_size"],
                            f"records/{sub['track']}/{sub['date']}_{sub['name']}/train_gpt.py")
    who = (sub["author"] or "(no author given)") + (f" (@{sub['github_id']})" if sub["github_id"] else "")
    out = [f"# {sub['name']}", ""] + ([sub["blurb"], ""] if sub["blurb"] else [])
    out += [f"Track `{sub['track']}`, {sub['date']}, by {who}.", ""]
    if sub["track"] == NON_RECORD_TRACK:
        out += (["**Non-record submission**: it is not a record because", ""] + [f"- {r}" for r in reasons] + [""]
                if reasons else ["**Non-record submission** by choice (--non-record); every record check passed.", ""])
    code = f"code {sub['bytes_code']:,} bytes" + (
        f", packed; {sub['bytes_code_unpacked']:,} unpacked" if "bytes_code_unpacked" in sub else "")
    out += ["## Result", "", f"val_bpb **{_fmt(sub['val_bpb'])}** (sample std {_fmt(sub['val_bpb_std'])}), val_loss "
            f"{_fmt(sub['val_loss'])} nats/token (sample std {_fmt(sub['val_loss_std'])}), mean over {n} seed(s) "
            f"{', '.join(map(str, sub['seeds']))}. Largest artifact {sub['bytes_total']:,} bytes ({code}) of the "
            f"16,000,000 allowed. {sub['technique_summary']}.", ""]
    if sig:
        unit = "nats/token" if sig["compared"] == "val_loss" else "bpb"
        out += [f"Against the previous record ({sig['compared']} per seed: "
                f"{', '.join(f'{v:g}' for v in sig['prev_values'])}): improvement {sig['delta_nats']:.5f} nats/token, "
                f"one-sided Welch t-test of an improvement of at least 0.005 nats (margin {sig['margin']:.6f} {unit}): "
                f"t = {sig['t']:.3f}, df = {sig['df']:.2f}, p = {sig['p_value']:.4g} -> "
                + ("**passes** p < 0.01." if sig["passes_p01"] else "**does not pass** p < 0.01."), ""]
    preset = f" The runs set PRESET={first.s['config_changed']['PRESET']}; the command spells out what it resolved " \
             "to." if first.s["config_changed"].get("PRESET") else ""
    out += ["## Command", "", "Run from the repository root (paths are relative to it) with this folder's "
            "`train_gpt.py`; the command sets every knob whose value differed from the script's defaults." + preset,
            "", "```bash", command, "```", ""] + ([" ".join(notes), ""] if notes else [])
    if requirements:
        out += ["Besides torch and numpy the script imports what `requirements.txt` lists (" + ", ".join(requirements)
                + "): `pip install -r requirements.txt`.", ""]
    out += [ship["about"], "", "## Data", ""] + data_section(first.config, first.defaults, repo_root)
    defaults, cfg = first.defaults or {}, portable_config(first.config, repo_root, None)[0]
    out += ["## Knobs changed from the defaults", ""] + _table(
        ["knob", "value", "default"], [[f"`{k}`", f"`{_env_value(v)}`", f"`{_env_value(defaults[k])}`" if k in defaults
                                        else "?"] for k, v in sorted(cfg.items())]) + [""]
    out += ["## Per-seed results", ""] + _table(
        ["seed", "val_bpb", "val_loss", "artifact bytes", "train s", "eval s", "steps", "step_avg ms"],
        [[seed] + [_fmt(v[k], spec) for k, spec in PER_SEED.items()] for seed, v in sub["seed_results"].items()])
    out += [f"| **mean** | {_fmt(sub['val_bpb'])} | {_fmt(sub['val_loss'])} | | | | | |",
            f"| **std** | {_fmt(sub['val_bpb_std'])} | {_fmt(sub['val_loss_std'])} | | | | | |", ""]
    tag, sc = first.tag, lambda r, k: _fmt(_get(r.s, f"scores.{k}.val_bpb"))  # noqa: E731
    out += ["Every scored pass of the same run (val_bpb); the sliding window is the network alone, the final score "
            "adds the n-gram mixer and TTT:", ""] + _table(
        ["seed", "pre-quantization", f"{tag} round-trip", f"{tag} sliding window", "final (score-first)"],
        [[r.seed, sc(r, "prequant"), sc(r, "roundtrip"), sc(r, "sliding"), sc(r, "legal_ttt")] for r in runs]) + [""]
    fits = [(r.seed, r.s["export"]) for r in runs if r.s.get("export")]
    out += ["Export fit (clip multipliers chosen so code + model fit the byte target):", ""] + [
        f"- seed {seed}: " + ", ".join(f"{k} {round(f[k], 3):g}" if isinstance(f[k], float) else f"{k} {f[k]}"
                                       for k in EXPORT_KEYS if k in f) for seed, f in fits] + [""] if fits else []
    out += ["## val_bpb during training", "", plot_note or "![val_bpb against training time](val_bpb.png)", ""]
    out += ["## Compliance", ""] + _table(["check", "all seeds"], [[k, _flag_cell(k, v, reasons)] for k, v in
                                                                  sub["compliance"].items()]) + [""]
    out += (["Not a record because: " + "; ".join(reasons) + ".", ""] if reasons else
            ["Every record check passed for every seed.", ""])
    for r in runs:
        out += [f"Seed {r.seed} (verbatim from `train_seed{r.seed}.log`):", "", "```",
                *(r.compliance_lines or ["(no compliance lines)"]), "```", ""]
    out += ["## Environment and sources", "", f"{sub['hardware']}; python {first.versions.get('python', '?')}, torch "
            f"{sub['pytorch_version'] or '?'}, cuda {sub['cuda_version'] or 'none'}. Written by "
            "`records/make_record.py` from each run's summary (the `summary_json` line: scores, bytes, steps, times, "
            "export fit, compliance) and the log's `source`, `versions`, `config_defaults` and `step:... val_bpb:` "
            "lines:", ""]
    out += [f"- seed {r.seed}: summary at {r.where['summary']}, source at {r.where['source']} of "
            f"`train_seed{r.seed}.log`" for r in runs] + [""]
    return "\n".join(out)


def make_record(logs: list[Path], *, name: str, out_root: Path = DEFAULT_OUT_ROOT, script: Path = DEFAULT_SCRIPT,
                author: str = "", github_id: str = "", blurb: str = "", date: str | None = None,
                track: str | None = None, non_record: bool = False, prev_record_bpb: list[float] | None = None,
                prev_record_loss: list[float] | None = None, force: bool = False, packed: bool | None = None,
                repo_root: Path = REPO_ROOT, requirements: Path | None = None, warn=None) -> Path:
    """Check the logs and write the record folder; return its path. Raises RecordError for every refusal.

    packed: write the packed form of the script (train_gpt.pack_source, imported from `script`) and count it in the
    artifact bytes; None (the default): whenever the script defines pack_source, since its runs' fit counted that
    form; False: copy the readable script and count its bytes. repo_root: the command runs from it and its paths
    are made relative to it. requirements: the requirements file the folder's requirements.txt takes lines from
    (default: repo_root/requirements.txt).
    """
    warn = warn or (lambda msg: print(f"make_record: warning: {msg}", file=sys.stderr))
    if not logs:
        raise RecordError("give at least one log")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise RecordError(f"--name {name!r} must be letters, digits, '.', '_' or '-' (it names the folder)")
    date = date or datetime.date.today().isoformat()
    try:
        datetime.date.fromisoformat(date if re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) else "")
    except ValueError:
        raise RecordError(f"--date {date!r} is not a date in YYYY-MM-DD form") from None
    if track not in (None, RECORD_TRACK, NON_RECORD_TRACK):
        raise RecordError(f"--track {track!r} is not {RECORD_TRACK} or {NON_RECORD_TRACK}")
    if non_record and track == RECORD_TRACK:
        raise RecordError(f"--non-record contradicts --track {RECORD_TRACK}")
    track = NON_RECORD_TRACK if non_record or track == NON_RECORD_TRACK else RECORD_TRACK

    runs, script, repo_root = [read_log(Path(p)) for p in logs], Path(script), Path(repo_root)
    check_consistent(runs)
    script_hash = check_script(script, runs)
    if packed is None:  # a script with pack_source (the form its runs' fit counted), or one already packed
        packed = b"\ndef pack_source(" in script.read_bytes() or bool(PACKED_HEADER.match(script.read_bytes()))
    ship = ship_script(script, script_hash, runs, packed, warn)
    flags, reasons = check_compliance(runs)
    if reasons and track == RECORD_TRACK:
        raise RecordError("not a record: " + "; ".join(reasons) + "; pass --non-record to file it as a non-record "
                          "submission")
    sig = significance(runs, prev_record_bpb, prev_record_loss)
    folder = Path(out_root) / track / f"{date}_{name}"
    if folder.exists() and not force:
        raise RecordError(f"{folder} already exists; choose another --name or --date, or pass --force to replace it")
    if len(runs) < 3:
        warn(f"{len(runs)} seed(s); records are expected to show 3 seeds (compliance.three_seeds is false)")
    if not author or not github_id:
        warn("--author or --github-id is empty in submission.json")
    if len({r.hardware for r in runs}) > 1:
        warn("the seeds ran on different hardware: " + ", ".join(sorted({r.hardware for r in runs})))
    extra = script_requirements(ship["code"], Path(requirements or repo_root / "requirements.txt"))
    meta = {"author": author, "github_id": github_id, "name": name, "blurb": blurb or technique_summary(runs[0]),
            "date": date, "track": track}
    sub = build_submission(runs, meta, flags, sig, ship)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for r in runs:
            shutil.copyfile(r.path, tmp / f"train_seed{r.seed}.log")
        (tmp / "train_gpt.py").write_bytes(ship["file"])
        if extra:
            (tmp / "requirements.txt").write_text("\n".join(extra) + "\n")
        plot_note = plot_val_bpb(runs, tmp / "val_bpb.png")
        (tmp / "submission.json").write_text(json.dumps(sub, indent=2) + "\n")
        readme = build_readme(runs, sub, reasons, plot_note, ship, extra, repo_root)
        (tmp / "README.md").write_text(readme + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ----------------------------------------------------------------------------------------------------------------
# A SWEEP'S TABLE
# logs/results.jsonl holds one summary per finished run (train_gpt.py appends it): one markdown row per run. Knobs
# every run shares are said once above the table, so each row shows what sets it apart.
# ----------------------------------------------------------------------------------------------------------------

def results_table(path: Path) -> str:
    if not path.is_file():
        raise RecordError(f"{path}: no such file (train_gpt.py appends one line per finished run to "
                          "logs/results.jsonl)")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        try:
            s = json.loads(line) if line.strip() else None
            if s is not None and not isinstance(s.get("config_changed"), dict):
                raise ValueError("no config_changed object")
        except (ValueError, AttributeError) as e:
            raise RecordError(f"{path}: line {lineno} is not a run summary ({e})") from None
        if s is not None:
            knobs = {k: (Path(v).name if k.endswith("_PATH") else _env_value(v)) for k, v in s["config_changed"].items()
                     if k != "RUN_ID"}
            rows.append((s, knobs))
    if not rows:
        raise RecordError(f"{path}: no runs yet")
    shared = {k: v for k, v in rows[0][1].items() if all(knobs.get(k) == v for _, knobs in rows)}
    out = ["Knobs every run set: " + (" ".join(f"{k}={v}" for k, v in sorted(shared.items())) or "none"), ""]
    out += _table(["run_id", "knobs", "result val_bpb", "bytes", "steps", "step_avg_ms", "train s", "eval s"], [
        [s.get("run_id"), " ".join(f"{k}={v}" for k, v in sorted(knobs.items()) if k not in shared) or "-",
         _fmt(_get(s, "result.val_bpb")), _get(s, "bytes.total", "n/a"), _get(s, "train.steps", "n/a"),
         _fmt(_get(s, "train.step_avg_ms"), ".2f"), _fmt(_get(s, "train.seconds"), ".1f"),
         _fmt(s.get("eval_seconds"), ".1f")] for s, knobs in rows])
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------
# COMMAND LINE
# ----------------------------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other refusal
        print(f"make_record: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
    return values


def main(argv: list[str] | None = None) -> int:
    p = _Parser(description="Write records/<track>/<date>_<name>/ from the train logs of one configuration, or "
                            "print a sweep's table (--results).")
    p.add_argument("logs", nargs="*", type=Path, help="logs/<RUN_ID>.txt of each seed")
    p.add_argument("--results", nargs="?", type=Path, const=Path("logs/results.jsonl"), default=None,
                   help="print one row per run of this results.jsonl (default logs/results.jsonl) and exit")
    p.add_argument("--name", help="record name (letters, digits, . _ -); the folder is <date>_<name>")
    for opt in ("--author", "--github-id", "--blurb"):  # --blurb: one paragraph for submission.json and the README
        p.add_argument(opt, default="")
    p.add_argument("--date", default=None, help="YYYY-MM-DD (default: today)")
    p.add_argument("--track", choices=(RECORD_TRACK, NON_RECORD_TRACK), default=None,
                   help=f"default {RECORD_TRACK}, or {NON_RECORD_TRACK} with --non-record")
    p.add_argument("--non-record", action="store_true",
                   help="file a run that is not a record (failed checks) in the non-record track")
    prev = p.add_mutually_exclusive_group()
    prev.add_argument("--prev-record-bpb", type=_floats, default=None, help="previous record's per-seed val_bpb")
    prev.add_argument("--prev-record-loss", type=_floats, default=None, help="previous record's per-seed val_loss")
    p.add_argument("--out-root", type=Path, default=DEFAULT_OUT_ROOT, help="default: the records/ folder of this repo")
    p.add_argument("--script", type=Path, default=DEFAULT_SCRIPT, help="the train_gpt.py that ran (default: repo's)")
    p.add_argument("--raw", action="store_true",
                   help="copy --script as it is instead of its packed form (by default a script with pack_source is "
                        "packed, imported for it, so torch must be installed, and the packed bytes are counted)")
    p.add_argument("--force", action="store_true", help="replace an existing record folder")
    a = p.parse_args(argv)
    try:
        if a.results is not None:
            print(results_table(a.results))
            return 0
        if not a.logs or not a.name:
            p.error("give the seeds' logs and --name (or --results)")
        options = {k: v for k, v in vars(a).items() if k not in ("logs", "results", "raw")}  # make_record's names
        folder = make_record(a.logs, **options, packed=False if a.raw else None)
    except RecordError as e:
        print(f"make_record: error: {e}", file=sys.stderr)
        return 2
    sub = json.loads((folder / "submission.json").read_text())
    print(f"wrote {folder}\nval_bpb {sub['val_bpb']:.8f} (std {_fmt(sub['val_bpb_std'])}) over seeds {sub['seeds']}, "
          f"bytes_total {sub['bytes_total']}")
    if s := sub.get("significance"):
        print(f"significance: delta {s['delta_nats']:.5f} nats, p = {s['p_value']:.4g} "
              f"({'passes' if s['passes_p01'] else 'does not pass'} p < 0.01)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
