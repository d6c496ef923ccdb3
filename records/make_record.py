#!/usr/bin/env python3
"""Build a Parameter Golf record folder from the train logs of one configuration run with one or more seeds.

    python3 records/make_record.py logs/a.txt logs/b.txt logs/c.txt --name LeakyMixerTTT \\
        --author "Jane Doe" --github-id janedoe --prev-record-bpb 1.1194,1.1201,1.1189

writes records/<track>/<YYYY-MM-DD>_<name>/ with README.md, submission.json, train_seed<SEED>.log for each log,
the exact train_gpt.py that ran (checked against the logs' sha256; with --packed its packed, self-extracting form),
requirements.txt when the script needs more than torch and numpy, and val_bpb.png when matplotlib is installed.
The record track (the default) is refused unless every compliance check passes; --non-record files the run in the
non-record track and its README lists why it is not a record. Every refusal is one line on stderr and exit code 2;
records/README.md lists them and how the statistics work. Tests call make_record() in-process. Standard library
only (numpy/scipy/matplotlib are optional or unused; --packed imports the --script, which needs its own imports).
"""

from __future__ import annotations

import argparse
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


class RecordError(Exception):
    """A refusal the user can act on: printed as one line on stderr, exit code 2."""


# ----------------------------------------------------------------------------------------------------------------
# LOG PARSING
# train_gpt.py writes one event per line as `event key:value ...` (see the contract in records/README.md). The
# parser keeps the last occurrence of each final line, remembers where every number came from, ignores unknown
# lines and refuses malformed known ones (a half-written number must not become a record).
# ----------------------------------------------------------------------------------------------------------------

# Score lines: final_<TAG>_roundtrip / final_<TAG>_sliding_window with the quantization tag (int6, int5, int5-6: the
# bit widths of the attention and MLP matrices), final_prequant (the exported weights before quantization) and
# legal_ttt (the run's score); each also as `..._exact` with 8 decimals.
QUANT_TAG = r"int\d+(?:-\d+)*"
SCORE_EVENT = re.compile(rf"^(?:final_(?P<tag>{QUANT_TAG})_(?:roundtrip|sliding_window)|final_prequant|legal_ttt)"
                         r"(?:_exact)?$")
SIZE_PATTERNS = {
    "serialized_bytes": re.compile(r"^Serialized model (?P<label>\S+): (\d+) bytes\b"),
    "code_bytes": re.compile(r"^Code size: (\d+) bytes\b"),
    "packed_code_bytes": re.compile(r"^Packed code size: (\d+) bytes\b"),
    "total_bytes": re.compile(r"^Total submission size \S+: (\d+) bytes\b"),
}


def _fields(line: str) -> dict[str, str]:
    """The `key:value` tokens of a line (value split at the first colon); tokens without a colon are skipped."""
    out = {}
    for token in line.split():
        key, sep, value = token.partition(":")
        if sep and key:
            out[key] = value
    return out


def _ms(value: str) -> float:
    """'71415ms' -> 71415.0 (the unit is optional)."""
    return float(value[:-2] if value.endswith("ms") else value)


def _step(value: str) -> tuple[int, int | None]:
    """'200/20000' -> (200, 20000); '200' -> (200, None)."""
    done, _, total = value.partition("/")
    return int(done), (int(total) if total else None)


def parse_log(text: str, name: str = "log") -> dict:
    """Parse one train_gpt.py log into a dict; unknown lines are ignored, malformed known lines raise RecordError.

    Keys: source {file, sha256, bytes}, versions {...}, hardware {...}, config, config_defaults (dicts or None),
    runs (number of `config` lines), train_points / val_points (lists of dicts from `step:` lines), last_step
    {step, train_time_ms, step_avg_ms} from the last `step:` or `stopping_early:` line, stopping_early, sizes
    (serialized_bytes, code_bytes, packed_code_bytes, total_bytes), export_label (e.g. gptq-int6+xz), scores {event: {val_loss, val_bpb, ...}},
    quant_tags (the distinct TAGs of the final_<TAG>_ lines, in order of appearance), export_cost_bpb (float),
    export_fit (the line's key:value fields), compliance (the compliance_json dict), compliance_lines (verbatim),
    where {field: (line number, line)}.
    """
    log: dict = {"source": None, "versions": {}, "hardware": {}, "config": None, "config_defaults": None, "runs": 0,
                 "train_points": [], "val_points": [], "last_step": None, "stopping_early": None,
                 "serialized_bytes": None, "code_bytes": None, "packed_code_bytes": None, "total_bytes": None,
                 "export_label": None, "scores": {}, "quant_tags": [], "export_cost_bpb": None, "export_fit": None, "compliance": None,
                 "compliance_lines": [], "where": {}}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        try:
            field = _parse_line(log, line)
        except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
            shown = line if len(line) <= 100 else line[:100] + "..."
            raise RecordError(f"{name}: line {lineno} is malformed ({type(e).__name__}: {e}): {shown}") from None
        if field:
            log["where"][field] = (lineno, line)
    return log


def _parse_line(log: dict, line: str) -> str | None:
    """Store what one line says in log; return the name of the field it set (for `where`), or None."""
    head, _, rest = line.partition(" ")
    if head == "source" and "sha256:" in rest:
        f = _fields(rest)
        if not re.fullmatch(r"[0-9a-f]{64}", f["sha256"]):
            raise ValueError("sha256 is not 64 hex digits")
        log["source"] = {"file": rest.split()[0], "sha256": f["sha256"], "bytes": int(f["bytes"])}
    elif head in ("versions", "hardware"):
        log[head] = _fields(rest)
    elif head in ("config", "config_defaults", "compliance_json") and rest.startswith("{"):
        value = json.loads(rest)
        if not isinstance(value, dict):
            raise ValueError(f"{head} is not a JSON object")
        log["compliance" if head == "compliance_json" else head] = value
        log["runs"] += head == "config"
    elif head in ("compliance", "compliance_verdict"):
        log["compliance_lines"].append(line)
        return None
    elif head.startswith("step:") and "train_time:" in line:
        f = _fields(line)
        step, total = _step(f["step"])
        point = {"step": step, "total": total, "train_time_ms": _ms(f["train_time"]),
                 "step_avg_ms": _ms(f["step_avg"]) if "step_avg" in f else None}
        if "val_bpb" in f:
            log["val_points"].append(point | {"val_loss": float(f["val_loss"]), "val_bpb": float(f["val_bpb"])})
        elif "train_loss" in f:
            log["train_points"].append(point | {"train_loss": float(f["train_loss"])})
        log["last_step"] = point
        return "last_step"
    elif head == "stopping_early:":
        f = _fields(rest)
        step, total = _step(f["step"])
        log["stopping_early"] = log["last_step"] = {"step": step, "total": total, "step_avg_ms": None,
                                                    "train_time_ms": _ms(f["train_time"])}
        return "last_step"
    elif m := SCORE_EVENT.match(head):
        f = _fields(rest)
        score = {"val_loss": float(f["val_loss"]), "val_bpb": float(f["val_bpb"])}
        if "eval_time" in f:
            score["eval_time_ms"] = _ms(f["eval_time"])
        log["scores"][head] = score
        if m["tag"] and m["tag"] not in log["quant_tags"]:
            log["quant_tags"].append(m["tag"])
        return head
    elif head == "export_cost":
        log["export_cost_bpb"] = float(_fields(rest)["val_bpb"])
        return head
    elif head == "export_fit":
        f = _fields(rest)
        for key in ("bytes", "target", "tries"):
            if key in f:
                int(f[key])  # a malformed number is refused like any other known line
        log["export_fit"] = f
        return head
    else:
        for key, pattern in SIZE_PATTERNS.items():
            m = pattern.match(line)
            if m:
                log[key] = int(m.group(m.lastindex))
                if "label" in pattern.groupindex:
                    log["export_label"] = m["label"].rstrip(":")
                return key
        return None
    return {"config_defaults": "config_defaults", "compliance_json": "compliance"}.get(head, head)


# ----------------------------------------------------------------------------------------------------------------
# CHECKS
# One seed's log must be a complete run; all logs must be the same script and configuration; compliance is
# taken from the log's verdicts and re-checked from its numbers, so a wrong verdict cannot pass a bad run.
# ----------------------------------------------------------------------------------------------------------------

COMPLIANCE_KEYS = ("train_seconds", "eval_seconds", "artifact_bytes", "scoring", "train_data_at_eval",
                   "score_first", "verdicts")
# The record checks (contract section 2). A log without them predates the checks: accepted with --non-record only.
RECORD_KEY_TYPES = {
    "hardware": (str,), "world_size": (int,), "train_cap_seconds": (int, float), "scored_targets": (int,),
    "val_targets": (int,), "eval_max_tokens": (int,), "data": (str,), "val_docs_in_train": (int, type(None)),
    "export_fit": (str,), "record": (bool,), "not_record_because": (list,),
}


@dataclasses.dataclass
class Run:
    """One seed: the source log path, its parsed content and the numbers the record reports."""
    path: Path
    log: dict
    seed: int
    packed_total: int | None = None  # with --packed: model bytes + the packed script's bytes

    @property
    def final(self) -> dict:
        return self.log["scores"]["legal_ttt_exact"]

    @property
    def tag(self) -> str:
        """The quantization tag of the final_<TAG>_ lines, e.g. int6, int5 or int5-6."""
        return self.log["quant_tags"][0]

    @property
    def total_bytes(self) -> int:
        """The artifact bytes this record reports for the seed: model + packed code with --packed, else the log's
        `Total submission size` (model + the code that ran)."""
        return self.log["total_bytes"] if self.packed_total is None else self.packed_total

    @property
    def steps(self) -> int | None:
        return self.log["last_step"]["step"] if self.log["last_step"] else None

    @property
    def step_avg_ms(self) -> float | None:
        last = self.log["last_step"]
        if not last:
            return None
        if last["step_avg_ms"] is not None:
            return last["step_avg_ms"]
        return round(last["train_time_ms"] / last["step"], 2) if last["step"] else None  # stopping_early line

    @property
    def train_seconds(self) -> float | None:
        """None for a run that trained nothing (LOAD_ARTIFACT)."""
        value = self.log["compliance"]["train_seconds"]
        return None if value is None else float(value)

    @property
    def eval_seconds(self) -> float:
        return float(self.log["compliance"]["eval_seconds"])

    @property
    def record_keys_missing(self) -> list[str]:
        return [k for k in RECORD_KEY_TYPES if k not in self.log["compliance"]]


def _is_number(v, *, null_ok: bool = False) -> bool:
    return (v is None and null_ok) or (isinstance(v, (int, float)) and not isinstance(v, bool))


def load_run(path: Path) -> Run:
    """Read and parse one log; refuse when a line the record needs is missing."""
    if not path.is_file():
        raise RecordError(f"{path}: no such log file")
    text = path.read_bytes().decode("utf-8", errors="replace")
    log = parse_log(text, str(path))

    def need(ok, what: str):
        if not ok:
            raise RecordError(f"{path}: {what}")
    need(log["runs"] >= 1, "no `config {...}` line; is this a log written by train_gpt.py?")
    need(log["runs"] == 1, f"holds {log['runs']} runs (one `config` line each); give the log of a single run")
    need(log["source"], "no `source train_gpt.py sha256:... bytes:...` line")
    need(log["config_defaults"] is not None, "no `config_defaults {...}` line")
    need(isinstance(log["config"].get("SEED"), int), "the config line has no integer SEED")
    tags = log["quant_tags"]
    need(len(tags) <= 1, f"has final_ lines of {len(tags)} quantization tags ({', '.join(tags)}); one run exports "
                         "at one bit width: give the log of a single run")
    need(tags and f"final_{tags[0]}_roundtrip_exact" in log["scores"],
         f"no `final_{tags[0] if tags else '<TAG>'}_roundtrip_exact` line" + ("" if tags else " (TAG: int6, int5, "
         "int5-6, ...)") + ": the run did not finish its quantized round-trip evaluation")
    need("legal_ttt_exact" in log["scores"],
         "no final `legal_ttt_exact` line (the run's score): the run did not finish its score-first evaluation")
    need(log["compliance"] is not None, "no `compliance_json {...}` line: cannot check the run's compliance")
    missing = [k for k in COMPLIANCE_KEYS if k not in log["compliance"]]
    need(not missing, f"compliance_json lacks {', '.join(missing)}")
    c = log["compliance"]
    need(_is_number(c["train_seconds"], null_ok=True) and _is_number(c["eval_seconds"])
         and _is_number(c["artifact_bytes"]) and isinstance(c["verdicts"], dict),
         "compliance_json: train_seconds, eval_seconds and artifact_bytes must be numbers, verdicts an object")
    wrong = [k for k, types in RECORD_KEY_TYPES.items() if k in c and (
        not isinstance(c[k], types) or (isinstance(c[k], bool) and bool not in types))]
    need(not wrong, "compliance_json: " + ", ".join(f"{k} is {json.dumps(c.get(k))}" for k in wrong) +
         " (contract: hardware and data strings; world_size, scored_targets, val_targets, eval_max_tokens integers; "
         "train_cap_seconds a number; val_docs_in_train an integer or null; export_fit yes/no; record a boolean; "
         "not_record_because a list)")
    need(log["total_bytes"] is not None, "no `Total submission size ...: N bytes` line")
    need(log["code_bytes"] is not None, "no `Code size: N bytes` line")
    return Run(path=path, log=log, seed=int(log["config"]["SEED"]))


def check_consistent(runs: list[Run]) -> None:
    """Refuse duplicate seeds, logs of different scripts and logs of different configurations."""
    seen: dict[int, Run] = {}
    for run in runs:
        if run.seed in seen:
            raise RecordError(f"duplicate seed {run.seed}: in both {seen[run.seed].path} and {run.path}")
        seen[run.seed] = run
    first = runs[0]
    for run in runs[1:]:
        a, b = first.log["source"]["sha256"], run.log["source"]["sha256"]
        if a != b:
            raise RecordError(f"logs disagree on the script: {first.path} ran train_gpt.py sha256:{a[:12]}... "
                              f"but {run.path} ran sha256:{b[:12]}...")
    missing = object()
    for run in runs[1:]:
        ca, cb = first.log["config"], run.log["config"]
        for key in sorted((set(ca) | set(cb)) - {"SEED", "RUN_ID"}):
            va, vb = ca.get(key, missing), cb.get(key, missing)
            if va != vb:
                show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
                raise RecordError(f"logs disagree on the configuration: {key}={show(va)} in {first.path} but "
                                  f"{key}={show(vb)} in {run.path} (only SEED and RUN_ID may differ)")
    for run in runs[1:]:
        if run.tag != first.tag:
            raise RecordError(f"logs disagree on the quantization: {first.path} exported {first.tag} but {run.path} "
                              f"exported {run.tag}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


def check_script(script: Path, runs: list[Run]) -> str:
    """Refuse a --script whose sha256 is not the one the logs ran; return the hash."""
    if not script.is_file():
        raise RecordError(f"--script {script}: no such file (give the exact train_gpt.py that wrote the logs)")
    digest, logged = sha256_file(script), runs[0].log["source"]["sha256"]
    if digest != logged:
        raise RecordError(f"--script {script} has sha256:{digest[:12]}... but the logs ran sha256:{logged[:12]}...; "
                          "pass the exact file that ran (e.g. git show <commit>:train_gpt.py > /tmp/train_gpt.py)")
    return digest


# ----------------------------------------------------------------------------------------------------------------
# PACKING (--packed) and REQUIREMENTS
# The packing functions live in train_gpt.py (pack_source, unpack_source, PACKED_MARKER); the --script is imported
# only when --packed is given, so the normal path stays standard-library only.
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
        raise RecordError(f"--packed: importing --script {script} failed ({type(e).__name__}: {e}); it needs its own "
                          "imports (torch, numpy) installed") from None
    finally:
        sys.modules.pop(name, None)
    lacking = [n for n in ("pack_source", "unpack_source", "PACKED_MARKER") if not hasattr(module, n)]
    if lacking:
        raise RecordError(f"--packed: --script {script} has no {', '.join(lacking)}; only a train_gpt.py with the "
                          "packing functions can be packed (drop --packed to copy the script as it ran)")
    return module


def pack_script(script: Path) -> dict:
    """The packed form of the script that ran (already checked against the logs' sha256), verified to unpack to it.

    Returns {packed (bytes), already_packed, source_sha256, source_bytes, packed_sha256}. A script that was itself
    packed when it ran is kept byte for byte.
    """
    ran = script.read_bytes()
    packer = load_packer(script)
    try:
        already = ran.startswith(packer.PACKED_MARKER)
        packed = ran if already else packer.pack_source(ran)
        source = packer.unpack_source(packed)
    except Exception as e:
        raise RecordError(f"--packed: the packing functions of --script {script} failed ({type(e).__name__}: "
                          f"{e})") from None
    if not isinstance(packed, bytes) or not packed.startswith(packer.PACKED_MARKER):
        raise RecordError(f"--packed: pack_source of --script {script} did not return a packed script (bytes "
                          "starting with PACKED_MARKER)")
    if not already and source != getattr(packer, "runnable_source", lambda b: b)(ran):
        raise RecordError(f"--packed: unpack_source(pack_source(script)) is not the script that ran "
                          f"(sha256:{sha256_bytes(source)[:12]}... instead of sha256:{sha256_bytes(ran)[:12]}...); "
                          "the packing functions of --script are broken")
    return {"packed": packed, "already_packed": already, "source_sha256": sha256_bytes(source),
            "source_bytes": len(source), "packed_sha256": sha256_bytes(packed)}


def apply_packed_sizes(runs: list[Run], packed_bytes: int, warn) -> None:
    """With --packed, each seed's artifact is its model bytes + the packed script (the file the folder holds)."""
    for run in runs:
        if run.log["serialized_bytes"] is None:
            raise RecordError(f"{run.path}: no `Serialized model ...: N bytes` line; --packed needs the model bytes "
                              "to count model + packed code")
        logged = run.log["packed_code_bytes"]
        if logged is not None and logged != packed_bytes:
            warn(f"{run.path} logged `Packed code size: {logged} bytes` but the packed file is {packed_bytes} bytes "
                 "(another lzma version?); the record counts the file it holds")
        run.packed_total = run.log["serialized_bytes"] + packed_bytes


BASE_PACKAGES = {"torch", "numpy"}  # what every record's environment has


def extra_requirements(requirements: Path) -> list[str]:
    """The package lines of the repository's requirements.txt other than torch and numpy (comments dropped)."""
    if not requirements.is_file():
        return []
    out = []
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if m and not line.startswith("-") and re.sub(r"[-_.]+", "-", m.group(0)).lower() not in BASE_PACKAGES:
            out.append(line)
    return out


# ----------------------------------------------------------------------------------------------------------------
# COMPLIANCE
# Each check: the verdict train_gpt.py logged (compliance_json "verdicts") and this tool's re-check of the logged
# numbers; a check holds for a seed when both agree on PASS. The record track needs every check to hold.
# ----------------------------------------------------------------------------------------------------------------

def _train_clock_why(c: dict, r: Run) -> str:
    cap = c["train_cap_seconds"]
    return f"MAX_WALLCLOCK_SECONDS={cap:g} (no cap)" if cap <= 0 else f"MAX_WALLCLOCK_SECONDS={cap:g}, over 600 s"


@dataclasses.dataclass(frozen=True)
class Check:
    name: str  # the verdict's name in compliance_json (or the key re-checked, when the log has no verdict for it)
    flag: str | None  # submission.json compliance key (None: a record requirement without a boolean)
    ok: object  # (compliance_json, Run) -> bool: the re-check of the logged numbers
    why: object  # (compliance_json, Run) -> str: why it fails, e.g. "ran on 1xcpu, a record needs 8xH100"
    has_verdict: bool = True
    record_check: bool = False  # reads RECORD_KEY_TYPES keys, absent from logs older than the record checks


CHECKS = (
    Check("train_time", "train_under_600s",
          lambda c, r: c["train_seconds"] is not None and c["train_seconds"] <= TRAIN_LIMIT_S,
          lambda c, r: "train_seconds unknown (an evaluation of a loaded artifact trains nothing)"
          if c["train_seconds"] is None else f"trained {c['train_seconds']:.1f} s, over the 600 s limit"),
    Check("eval_time", "eval_under_600s", lambda c, r: c["eval_seconds"] <= EVAL_LIMIT_S,
          lambda c, r: f"evaluated in {c['eval_seconds']:.1f} s, over the 600 s limit"),
    Check("artifact_size", "artifact_under_16mb",
          lambda c, r: max(c["artifact_bytes"], r.total_bytes) <= ARTIFACT_LIMIT_BYTES,
          lambda c, r: f"{max(c['artifact_bytes'], r.total_bytes)} bytes, over the 16000000-byte limit"),
    Check("scoring", "no_hashed_ngram_cache",
          lambda c, r: c["scoring"] == "normalized" or r.log["config"].get("MIXER_HEAD") == "none",
          lambda c, r: f"scoring {c['scoring']}, not a normalized distribution over the vocabulary (C1/C2)"),
    Check("train_data_at_eval", "no_train_data_at_eval", lambda c, r: c["train_data_at_eval"] == "no",
          lambda c, r: f"train_data_at_eval {c['train_data_at_eval']}: training data read at evaluation"),
    Check("score_first", "score_first_ttt", lambda c, r: c["score_first"] == "yes",
          lambda c, r: f"score_first {c['score_first']}"),
    Check("hardware", "eight_h100", lambda c, r: c["hardware"].startswith("8x") and "H100" in c["hardware"],
          lambda c, r: f"ran on {c['hardware']}, a record needs 8xH100", record_check=True),
    Check("train_clock", "train_clock_capped", lambda c, r: 0 < c["train_cap_seconds"] <= TRAIN_LIMIT_S,
          _train_clock_why, record_check=True),
    Check("full_validation", "full_validation",
          lambda c, r: c["eval_max_tokens"] == 0 and c["scored_targets"] == c["val_targets"],
          lambda c, r: f"scored {c['scored_targets']} of {c['val_targets']} targets"
          + (f" (EVAL_MAX_TOKENS={c['eval_max_tokens']})" if c["eval_max_tokens"] else ""), record_check=True),
    Check("data", "challenge_fineweb", lambda c, r: c["data"].startswith("fineweb verified"),
          lambda c, r: c["data"] or "(empty)", record_check=True),
    Check("val_overlap", "no_val_in_train", lambda c, r: c["val_docs_in_train"] == 0,
          lambda c, r: "val_docs_in_train unknown (the data's provenance record did not check it)"
          if c["val_docs_in_train"] is None else
          f"{c['val_docs_in_train']} validation documents are also training documents", record_check=True),
    Check("export_fit", None, lambda c, r: c["export_fit"] == "yes",
          lambda c, r: f"export_fit {c['export_fit']} (the export was not fitted to the byte target)",
          has_verdict=False, record_check=True),
)
FLAG_ORDER = ("no_hashed_ngram_cache", "score_first_ttt", "three_seeds", "train_under_600s", "eval_under_600s",
              "artifact_under_16mb", "no_train_data_at_eval", "eight_h100", "train_clock_capped", "full_validation",
              "challenge_fineweb", "no_val_in_train")


def _seed_failures(run: Run) -> list[tuple[str, str]]:
    """(check name, reason) for every check this seed fails."""
    c, out = run.log["compliance"], []
    verdicts = c["verdicts"]
    logged_reasons = [x for x in c.get("not_record_because") or [] if isinstance(x, str)]
    missing = run.record_keys_missing
    if missing:
        out.append(("compliance_json", f"lacks {', '.join(missing)} (a log from before the record checks); rerun "
                                       "with the current train_gpt.py"))
    for check in CHECKS:
        if check.record_check and missing:
            continue
        verdict = verdicts.get(check.name, "(missing)") if check.has_verdict else None
        holds = check.ok(c, run)
        if holds and verdict in ("PASS", None):
            continue
        if not holds:
            out.append((check.name, check.why(c, run) + (" (though the log says PASS)" if verdict == "PASS" else "")))
        else:  # the numbers hold, the log's verdict does not: trust the stricter one and give the log's reason
            said = next((x.partition(":")[2].strip() for x in logged_reasons if x.startswith(check.name + ":")), "")
            out.append((check.name, f"the log's verdict is {verdict}" + (f": {said}" if said else "")))
    known = {check.name for check in CHECKS}
    for name, verdict in sorted(verdicts.items()):
        if name not in known and verdict != "PASS":
            out.append((name, f"the log's verdict is {verdict}"))
    if not out and c.get("record", True) is not True:
        out.append(("record", "the log says record:false" + (f" ({'; '.join(logged_reasons)})" if logged_reasons
                                                              else "")))
    return out


def check_compliance(runs: list[Run]) -> tuple[dict[str, bool], list[str]]:
    """Per-check booleans over all seeds (submission.json's compliance object) and why the run is not a record.

    A seed fails a check when its verdict is not PASS or when the tool's own re-check of the logged numbers fails;
    any other verdict the log reports as FAIL is a failure too; a log without the record checks' keys fails them.
    Each reason is "<check>: <why>" once per distinct why, as "<check> (seed S): <why>" when not every seed has it.
    """
    per_seed = {run.seed: _seed_failures(run) for run in runs}
    flags = {}
    for check in CHECKS:
        if check.flag:
            failed = any(name in (check.name, "compliance_json" if check.record_check else None)
                         for fails in per_seed.values() for name, _ in fails)
            flags[check.flag] = flags.get(check.flag, True) and not failed
    flags["three_seeds"] = len(runs) >= 3
    grouped: dict[tuple[str, str], list[int]] = {}
    for seed, fails in per_seed.items():
        for key in fails:
            grouped.setdefault(key, []).append(seed)
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

def _beta_continued_fraction(a: float, b: float, x: float) -> float:
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
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc_regularized(a: float, b: float, x: float, one_minus_x: float | None = None) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1; pass one_minus_x when it is known more precisely than 1 - x."""
    y = 1.0 - x if one_minus_x is None else one_minus_x
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, y) / b


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
# Text for README.md and submission.json, built only from the logs. Config keys the script may add or drop later
# are read with .get, and a sentence whose keys are absent is left out rather than guessed.
# ----------------------------------------------------------------------------------------------------------------

def _sentence(cfg: dict, template: str, *keys: str) -> str | None:
    return template.format(**{k: _show(cfg[k]) for k in keys}) if all(k in cfg for k in keys) else None


def _show(v) -> str:
    if isinstance(v, list):
        return ",".join(_show(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def describe_config(cfg: dict) -> list[str]:
    """Bullets saying what the run does: model shape, training, n-gram mixer, quantization, evaluation and TTT."""
    g = cfg.get
    out = []
    model = _sentence(cfg, "{NUM_LAYERS} layers, width {MODEL_DIM}, {NUM_HEADS} query / {NUM_KV_HEADS} KV heads, "
                      "MLP {MLP_MULT}x", "NUM_LAYERS", "MODEL_DIM", "NUM_HEADS", "NUM_KV_HEADS", "MLP_MULT")
    if model:
        extras = [s for s in (
            _sentence(cfg, "vocab {VOCAB_SIZE}", "VOCAB_SIZE"),
            _sentence(cfg, "train sequence {TRAIN_SEQ_LEN}", "TRAIN_SEQ_LEN"),
            _sentence(cfg, "partial RoPE on {ROPE_DIMS} dims", "ROPE_DIMS"),
            _sentence(cfg, "XSA on the last {XSA_LAST_N} layers", "XSA_LAST_N") if g("XSA_LAST_N") else None,
            _sentence(cfg, "value embeddings on the last {VE_LAST_N}", "VE_LAST_N") if g("VE_LAST_N") else None,
            _sentence(cfg, "BigramHash {BIGRAM_VOCAB_SIZE}x{BIGRAM_DIM}", "BIGRAM_VOCAB_SIZE", "BIGRAM_DIM")
            if g("BIGRAM_VOCAB_SIZE") else None) if s]
        out.append("Model: " + "; ".join([model] + extras) + ".")
    train = _sentence(cfg, "Training: at most {ITERATIONS} steps of {TRAIN_BATCH_TOKENS} tokens, wallclock cap "
                      "{MAX_WALLCLOCK_SECONDS} s", "ITERATIONS", "TRAIN_BATCH_TOKENS", "MAX_WALLCLOCK_SECONDS")
    if train:
        opt = [s for s in (_sentence(cfg, "Muon LR {MATRIX_LR}", "MATRIX_LR"),
                           _sentence(cfg, "weight decay {MUON_WD}", "MUON_WD"),
                           _sentence(cfg, "EMA {EMA_DECAY}", "EMA_DECAY") if g("EMA_DECAY") else None,
                           "SWA" if g("SWA_EVERY") else None,
                           "late QAT" if g("LATE_QAT_LRMUL") else None) if s]
        out.append(train + (" (" + ", ".join(opt) + ")" if opt else "") + ".")
    if g("MIXER_HEAD") == "none":
        out.append("N-gram mixer: off (the neural model alone).")
    elif "MIXER_HEAD" in cfg:
        mixer = f"N-gram mixer: {g('MIXER_HEAD')} gate"
        mixer += _sentence(cfg, " over orders 2..{NGRAM_MAX_ORDER}", "NGRAM_MAX_ORDER") or ""
        mixer += _sentence(cfg, ", {NGRAM_BUCKETS} buckets per order", "NGRAM_BUCKETS") or ""
        scoring = {"normalized": "normalized (a full distribution over the vocabulary, C1/C2)",
                   "hashed_target": "hashed_target (count keyed by the target: invalid under C1/C2)"}
        if "NGRAM_SCORING" in cfg:
            mixer += f"; scoring {scoring.get(g('NGRAM_SCORING'), g('NGRAM_SCORING'))}"
        if "NGRAM_EVAL_PREFILL" in cfg:
            mixer += "; eval cache " + ("starts empty" if g("NGRAM_EVAL_PREFILL") == "none"
                                        else f"prefilled from {g('NGRAM_EVAL_PREFILL')} data")
        out.append(mixer + ".")
    quant = _sentence(cfg, "Export: int{QUANT_BITS} attention, int{QUANT_MLP_BITS} MLP, int{QUANT_EMBED_BITS} "
                      "embedding matrices, zstd level {ZSTD_LEVEL}", "QUANT_BITS", "QUANT_MLP_BITS",
                      "QUANT_EMBED_BITS", "ZSTD_LEVEL")
    if quant:
        out.append(quant + ".")
    evaluation = _sentence(cfg, "Evaluation: score-first chunks of {EVAL_CHUNK_TOKENS} tokens, sliding stride "
                           "{EVAL_STRIDE}", "EVAL_CHUNK_TOKENS", "EVAL_STRIDE") or "Evaluation: score-first chunks"
    if "TTT_EPOCHS" in cfg:
        if g("TTT_EPOCHS"):
            evaluation += "; after each chunk is scored, test-time training: " + (_sentence(
                cfg, "{TTT_EPOCHS} epoch(s) of {TTT_OPTIMIZER} at LR {TTT_LR} on {TTT_PARAMS} parameters",
                "TTT_EPOCHS", "TTT_OPTIMIZER", "TTT_LR", "TTT_PARAMS") or f"{g('TTT_EPOCHS')} epoch(s)")
        else:
            evaluation += "; no test-time training"
    out.append(evaluation + ".")
    return out


def technique_summary(cfg: dict, export: str | None = None) -> str:
    """One line for submission.json, e.g. '11L 512d GQA 8/8 MLP3.5x, multi n-gram mixer (2..7, normalized), ...';
    export: the label of the `Serialized model` line (e.g. gptq-int6+xz), else it is guessed from QUANT_BITS."""
    g = cfg.get
    parts = []
    if all(k in cfg for k in ("NUM_LAYERS", "MODEL_DIM")):
        shape = f"{g('NUM_LAYERS')}L {g('MODEL_DIM')}d"
        if "NUM_HEADS" in cfg and "NUM_KV_HEADS" in cfg:
            shape += f" {g('NUM_HEADS')}h/{g('NUM_KV_HEADS')}kv"
        if "MLP_MULT" in cfg:
            shape += f" MLP{_show(g('MLP_MULT'))}x"
        parts.append(shape)
    if g("MIXER_HEAD") not in (None, "none"):
        parts.append(f"{g('MIXER_HEAD')} n-gram mixer (orders 2..{g('NGRAM_MAX_ORDER', '?')}, "
                     f"{g('NGRAM_SCORING', '?')} scoring)")
    if export:
        parts.append(f"{export} export")
    elif "QUANT_BITS" in cfg:
        parts.append(f"int{g('QUANT_BITS')}+zstd export")
    if g("TTT_EPOCHS"):
        parts.append(f"score-first TTT {g('TTT_EPOCHS')} epoch(s) {g('TTT_OPTIMIZER', '')}".rstrip())
    elif "TTT_EPOCHS" in cfg:
        parts.append("score-first eval, no TTT")
    else:
        parts.append("score-first eval")
    return ", ".join(parts)


def _env_value(v) -> str:
    """A config value as the env string train_gpt.py parses back to the same value."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, list):
        return ",".join(_env_value(x) for x in v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def command_lines(cfg: dict, defaults: dict, seeds: list[int], world_size: int) -> str:
    """The exact launch command: every variable that differs from train_gpt.py's default (not RUN_ID), SEED always."""
    keys = sorted(k for k in cfg if k not in ("RUN_ID", "SEED", "PRESET") and cfg[k] != defaults.get(k, object()))
    if cfg.get("PRESET"):
        keys.insert(0, "PRESET")
    env = [f"{k}={shlex.quote(_env_value(cfg[k]))}" for k in keys]
    launch = f"torchrun --standalone --nproc_per_node={world_size} train_gpt.py"
    if len(seeds) == 1:
        return " \\\n".join(env + [f"SEED={seeds[0]}", launch])
    body = " \\\n  ".join(env + ["SEED=$SEED", launch])
    return f"for SEED in {' '.join(map(str, seeds))}; do\n  {body}\ndone"


# Where DATA_PATH / TOKENIZER_PATH outside the repository are put in the record's command (train_gpt.py's defaults
# and data/prepare.py's output folders).
PATH_DEFAULT_DIRS = {"DATA_PATH": "./data/datasets", "TOKENIZER_PATH": "./data/tokenizers"}


def portable_paths(cfg: dict, repo_root: Path, data_note: str | None = None) -> tuple[dict, list[str]]:
    """The config with every *_PATH value made relative to the repository (machine-absolute paths do not run
    elsewhere), and one note per path that had to be replaced.

    An absolute path inside repo_root becomes ./<relative path>; a DATA_PATH or TOKENIZER_PATH outside it (absolute,
    or relative with '..') becomes ./data/datasets/<folder name> or ./data/tokenizers/<file name>, with a note
    saying where the run read it (and data_note, the run's data check, e.g. "fineweb verified: 80 files").
    """
    root = posixpath.normpath(Path(repo_root).resolve().as_posix())
    out, notes = dict(cfg), []
    for key, value in cfg.items():
        if not (key.endswith("_PATH") and isinstance(value, str) and value.strip()):
            continue
        path = posixpath.normpath(value)
        if posixpath.isabs(path):
            if path == root or path.startswith(root.rstrip("/") + "/"):
                out[key] = "./" + posixpath.relpath(path, root) if path != root else "."
                continue
        elif path != ".." and not path.startswith("../"):
            continue  # already relative to the repository
        name = posixpath.basename(path)
        if key in PATH_DEFAULT_DIRS and name not in ("", ".", ".."):
            out[key] = f"{PATH_DEFAULT_DIRS[key]}/{name}"
            source = f" ({data_note})" if key == "DATA_PATH" and data_note else ""
            notes.append(f"The runs read {key}={value}, outside the repository{source}; the command uses "
                         f"{out[key]}, where data/prepare.py puts its {PATH_DEFAULT_DIRS[key][7:]}: put the same "
                         "files there.")
        else:
            notes.append(f"{key}={value} is a path on the machine that ran the logs, outside the repository.")
    return out, notes


def hardware_text(log: dict) -> str:
    h = log["hardware"]
    if not h:
        return "unknown"
    gpu = h.get("gpu", "none")
    what = gpu.replace("_", " ") if gpu != "none" else h.get("device", "cpu").upper()
    return f"{h.get('world_size', '?')}x {what}"


# ----------------------------------------------------------------------------------------------------------------
# WRITING THE FOLDER
# Everything is checked before anything is written; the folder is built in a temporary sibling and moved into
# place at the end, so a refusal or a crash never leaves half a record (and --force replaces it whole).
# ----------------------------------------------------------------------------------------------------------------

def _fmt(v, spec: str = ".8f") -> str:
    return "n/a" if v is None else format(v, spec)


def plot_val_bpb(runs: list[Run], path: Path) -> bool:
    """val_bpb against training time per seed (periodic val lines, then the final score); False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    shown = []  # y values that set the scale: the step-0 loss of an untrained model would flatten the curve
    for run in runs:
        pts = run.log["val_points"]
        (line,) = ax.plot([p["train_time_ms"] / 1000 for p in pts], [p["val_bpb"] for p in pts], marker=".",
                          label=f"seed {run.seed}: val_bpb during training")
        if run.train_seconds is not None:
            ax.scatter([run.train_seconds], [run.final["val_bpb"]], marker="*", s=140, color=line.get_color(),
                       zorder=3)
            shown.append(run.final["val_bpb"])
        shown += [p["val_bpb"] for p in pts if p["step"] > 0]
    ax.scatter([], [], marker="*", s=140, color="grey", label="final score (legal_ttt_exact), drawn at train end")
    lo, hi = min(shown), max(shown)
    pad = max(0.05 * (hi - lo), 0.002)
    ax.set_ylim(lo - pad, hi + pad)
    ax.axvline(TRAIN_LIMIT_S, linestyle="--", color="grey", linewidth=0.8, label="600 s training limit")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("val_bpb")
    ax.set_title("val_bpb against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def build_submission(runs, meta: dict, flags: dict, sig: dict | None, packed: dict | None = None) -> dict:
    losses = [r.final["val_loss"] for r in runs]
    bpbs = [r.final["val_bpb"] for r in runs]
    (loss_mean, loss_std), (bpb_mean, bpb_std) = mean_std(losses), mean_std(bpbs)
    first = runs[0].log
    hardware = sorted({hardware_text(r.log) for r in runs})
    cuda = first["versions"].get("cuda")
    sub = {
        "author": meta["author"], "github_id": meta["github_id"], "name": meta["name"], "blurb": meta["blurb"],
        "date": meta["date"], "track": meta["track"],
        "val_loss": round(loss_mean, 8), "val_bpb": round(bpb_mean, 8),
        "val_loss_std": None if loss_std is None else round(loss_std, 8),
        "val_bpb_std": None if bpb_std is None else round(bpb_std, 8),
        "bytes_total": max(r.total_bytes for r in runs),
        "bytes_code": len(packed["packed"]) if packed else max(r.log["code_bytes"] for r in runs),
    }
    if packed:
        sub["bytes_code_unpacked"] = packed["source_bytes"]
    sub |= {
        "seeds": [r.seed for r in runs],
        "seed_results": {str(r.seed): {
            "val_loss": r.final["val_loss"], "val_bpb": r.final["val_bpb"], "artifact_bytes": r.total_bytes,
            "steps": r.steps, "step_avg_ms": r.step_avg_ms, "train_time_s": r.train_seconds,
            "eval_time_s": r.eval_seconds} for r in runs},
        "quantization": runs[0].tag,
        "hardware": " / ".join(hardware),
        "pytorch_version": first["versions"].get("torch"),
        "cuda_version": None if cuda in (None, "none") else cuda,
        "technique_summary": technique_summary(first["config"], first["export_label"]),
        "compliance": flags,
    }
    if sig is not None:
        sub["significance"] = sig
    return sub


def _record_checks_table(runs: list[Run]) -> list[str]:
    """The record checks' logged values per seed (logs older than the checks have none)."""
    rows = [r for r in runs if not r.record_keys_missing]
    if not rows:
        return ["The logs predate the record checks (their `compliance_json` has no hardware, train clock, "
                "validation coverage, data or overlap keys).", ""]
    out = ["| seed | hardware | train cap s | scored / validation targets | data | val docs in train | export fit |",
           "|---:|---|---:|---:|---|---:|---|"]
    for r in rows:
        c = r.log["compliance"]
        overlap = "unknown" if c["val_docs_in_train"] is None else c["val_docs_in_train"]
        out.append(f"| {r.seed} | {c['hardware']} | {c['train_cap_seconds']:g} | {c['scored_targets']} / "
                   f"{c['val_targets']} | {c['data']} | {overlap} | {c['export_fit']} |")
    return out + [""]


def _script_paragraph(runs: list[Run], script_hash: str, packed: dict | None) -> str:
    ran_bytes = runs[0].log["source"]["bytes"]
    if not packed:
        return (f"`train_gpt.py` in this folder is the exact script that ran: sha256 `{script_hash}`, {ran_bytes:,} "
                "bytes (the hash in every log's `source` line).")
    if packed["already_packed"]:
        return (f"`train_gpt.py` in this folder is the exact script that ran, which was already packed (a "
                f"self-extracting script): sha256 `{script_hash}`, {ran_bytes:,} bytes (the hash in every log's "
                f"`source` line); the source it carries: sha256 `{packed['source_sha256']}`, "
                f"{packed['source_bytes']:,} bytes.")
    return (f"`train_gpt.py` in this folder is the **packed** form of the script that ran (a self-extracting script "
            "that runs the exact source; `train_gpt.unpack_source` restores it, and make_record checked that it "
            f"does): packed file sha256 `{packed['packed_sha256']}`, {len(packed['packed']):,} bytes; the source "
            f"that ran: sha256 `{script_hash}`, {packed['source_bytes']:,} bytes (the hash in every log's `source` "
            "line). The artifact bytes count the packed file.")


def build_readme(runs: list[Run], sub: dict, meta: dict, reasons: list[str], sig: dict | None,
                 plotted: bool, script_hash: str, *, command: str, path_notes: list[str],
                 packed: dict | None = None, requirements: list[str] | None = None) -> str:
    first = runs[0].log
    cfg = first["config"]
    tag = runs[0].tag
    n = len(runs)
    out = [f"# {meta['name']}", ""]
    if meta["blurb"]:
        out += [meta["blurb"], ""]
    who = meta["author"] or "(no author given)"
    if meta["github_id"]:
        who += f" (@{meta['github_id']})"
    out += [f"Track `{meta['track']}`, {meta['date']}, by {who}.", ""]
    if meta["track"] == NON_RECORD_TRACK:
        if reasons:
            out += ["**Non-record submission**: it is not a record because", ""] + [f"- {r}" for r in reasons] + [""]
        else:
            out += ["**Non-record submission**: submitted as non-record by choice (--non-record); every record "
                    "check passed.", ""]
    code = f"code {sub['bytes_code']:,} bytes" + (
        f", packed; {sub['bytes_code_unpacked']:,} bytes unpacked" if "bytes_code_unpacked" in sub else "")
    out += ["## Result", "",
            f"val_bpb **{_fmt(sub['val_bpb'])}** (sample std {_fmt(sub['val_bpb_std'])}), val_loss "
            f"{_fmt(sub['val_loss'])} nats/token (sample std {_fmt(sub['val_loss_std'])}), mean over {n} seed(s) "
            f"{', '.join(map(str, sub['seeds']))}. Largest artifact {sub['bytes_total']:,} bytes ({code}) of the "
            f"16,000,000 allowed. Weights exported as {tag}.", ""]
    if sig:
        unit = "nats/token" if sig["compared"] == "val_loss" else "bpb"
        out += [f"Against the previous record ({sig['compared']} per seed: "
                f"{', '.join(f'{v:g}' for v in sig['prev_values'])}): improvement {sig['delta_nats']:.5f} nats/token, "
                f"one-sided Welch t-test of an improvement of at least 0.005 nats (margin {sig['margin']:.6f} {unit}): "
                f"t = {sig['t']:.3f}, df = {sig['df']:.2f}, p = {sig['p_value']:.4g} -> "
                + ("**passes** p < 0.01." if sig["passes_p01"] else "**does not pass** p < 0.01."), ""]
    out += ["## What the run does", ""] + [f"- {b}" for b in describe_config(cfg)] + [""]
    out += ["## Command", "",
            "Every variable whose value differs from train_gpt.py's default (from the logs' `config` and "
            "`config_defaults` lines; RUN_ID only names the log file and is left out), run from the repository "
            "root with this folder's `train_gpt.py`; paths are relative to the repository root:", "",
            "```bash", command, "```", ""]
    out += [" ".join(path_notes), ""] if path_notes else []
    if requirements:
        out += ["Besides torch and numpy the script needs `pip install -r requirements.txt` (" +
                ", ".join(requirements) + ").", ""]
    out += [_script_paragraph(runs, script_hash, packed), ""]
    out += ["## Per-seed results", "",
            "| seed | val_bpb | val_loss | artifact bytes | train s | eval s | steps | step_avg ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        out.append(f"| {r.seed} | {r.final['val_bpb']:.8f} | {r.final['val_loss']:.8f} | {r.total_bytes} | "
                   f"{_fmt(r.train_seconds, '.2f')} | {r.eval_seconds:.2f} | {_fmt(r.steps, 'd')} | "
                   f"{_fmt(r.step_avg_ms, '.2f')} |")
    out += [f"| **mean** | {_fmt(sub['val_bpb'])} | {_fmt(sub['val_loss'])} | | | | | |",
            f"| **std** | {_fmt(sub['val_bpb_std'])} | {_fmt(sub['val_loss_std'])} | | | | | |", ""]
    prequant = any("final_prequant_exact" in r.log["scores"] for r in runs)
    cost = any(r.log["export_cost_bpb"] is not None for r in runs)
    head = ["seed"] + (["pre-quantization"] if prequant else []) + [f"{tag} round-trip"] + (
        ["export cost"] if cost else []) + [f"{tag} sliding window", "final (score-first mixer/TTT)"]
    out += ["Other scores of the same run (val_bpb), for comparison:", "",
            "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in runs:
        s = r.log["scores"]
        cells = [str(r.seed)] + ([_fmt(s.get("final_prequant_exact", {}).get("val_bpb"))] if prequant else [])
        cells += [f"{s[f'final_{tag}_roundtrip_exact']['val_bpb']:.8f}"]
        cells += [_fmt(r.log["export_cost_bpb"], "+.5f")] if cost else []
        cells += [_fmt(s.get(f"final_{tag}_sliding_window_exact", {}).get("val_bpb")), f"{r.final['val_bpb']:.8f}"]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    fits = [(r.seed, r.log["export_fit"]) for r in runs if r.log["export_fit"]]
    if fits:
        out += ["Export fit (the `export_fit` line: clip multipliers chosen so code + model fit the byte target):", ""]
        out += [f"- seed {seed}: " + ", ".join(f"{k} {v}" for k, v in f.items()) for seed, f in fits] + [""]
    out += ["## val_bpb during training", ""]
    out.append("![val_bpb against training time](val_bpb.png)" if plotted else
               "Plot skipped: matplotlib is not installed (pip install matplotlib, then rerun with --force). "
               "The points are the `step:... val_bpb:...` lines of the logs.")
    out += ["", "## Compliance", "", "| check | all seeds |", "|---|---|"]
    out += [f"| {k} | {'yes' if v else 'no'} |" for k, v in sub["compliance"].items()]
    out += [""] + _record_checks_table(runs)
    out += (["Not a record because: " + "; ".join(reasons) + ".", ""] if reasons else
            ["Every record check passed for every seed.", ""])
    for r in runs:
        block = r.log["compliance_lines"] or ["(this log has no human-readable compliance lines)"]
        out += [f"Seed {r.seed} (verbatim from `train_seed{r.seed}.log`):", "", "```", *block, "```", ""]
    out += ["## Environment", "",
            f"- hardware: {sub['hardware']}", f"- python {first['versions'].get('python', 'unknown')}, "
            f"torch {sub['pytorch_version'] or 'unknown'}, cuda {sub['cuda_version'] or 'none'}", ""]
    out += readme_provenance(runs, packed is not None)
    return "\n".join(out)


def readme_provenance(runs: list[Run], packed: bool = False) -> list[str]:
    """The README section saying which log line each reported number came from."""
    tag = runs[0].tag
    size = ("model bytes from `Serialized model ...: N bytes` + the packed train_gpt.py in this folder; bytes_code: "
            "the packed file (`Code size: N bytes` counts the script that ran)") if packed else (
           "`Total submission size ...: N bytes`; bytes_code: `Code size: N bytes`")
    out = ["## How the numbers were read", "",
           "Generated by `records/make_record.py` from the logs in this folder:", "",
           "- val_bpb, val_loss: the `legal_ttt_exact` line (score-first chunked evaluation with the n-gram mixer "
           "and TTT: the submission's score); mean and sample std (n - 1) over seeds.",
           f"- artifact bytes (bytes_total = the largest): {size}.",
           "- steps, step_avg: the last `step:` line (or the `stopping_early:` line, whose step_avg is "
           "train_time / steps).",
           "- train s, eval s and the compliance checks: the `compliance_json` line (train_seconds, eval_seconds, "
           "the record checks' values, verdicts), re-checked against the limits from the same numbers.",
           f"- other scores: the `final_{tag}_roundtrip_exact`, `final_{tag}_sliding_window_exact`, "
           "`final_prequant_exact` and `export_cost` lines (the last two when logged).",
           "- the command: the `config` and `config_defaults` lines; the script hash: the `source` line.", ""]
    fields = ("source", "legal_ttt_exact", f"final_{tag}_roundtrip_exact", "final_prequant_exact", "export_cost",
              "export_fit", "serialized_bytes", "total_bytes", "code_bytes", "packed_code_bytes", "last_step",
              "compliance")
    for r in runs:
        out += [f"Seed {r.seed} (`train_seed{r.seed}.log`):", ""]
        for lineno, line in sorted(r.log["where"][f] for f in fields if f in r.log["where"]):
            out.append(f"- line {lineno}: `{line if len(line) <= 160 else line[:160] + ' ...'}`")
        out.append("")
    return out


def make_record(logs: list[Path], *, name: str, out_root: Path = DEFAULT_OUT_ROOT, script: Path = DEFAULT_SCRIPT,
                author: str = "", github_id: str = "", blurb: str = "", date: str | None = None,
                track: str | None = None, non_record: bool = False, prev_record_bpb: list[float] | None = None,
                prev_record_loss: list[float] | None = None, force: bool = False, packed: bool = False,
                repo_root: Path = REPO_ROOT, requirements: Path | None = None, warn=None) -> Path:
    """Check the logs and write the record folder; return its path. Raises RecordError for every refusal.

    packed: write the packed form of the script (train_gpt.pack_source, imported from `script`) and count it in the
    artifact bytes. repo_root: the paths in the command are made relative to it. requirements: the requirements
    file whose packages other than torch and numpy go to the folder's requirements.txt (default:
    repo_root/requirements.txt).
    """
    warn = warn or (lambda msg: print(f"make_record: warning: {msg}", file=sys.stderr))
    if not logs:
        raise RecordError("give at least one log")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise RecordError(f"--name {name!r} must be letters, digits, '.', '_' or '-' (it names the folder)")
    date = date or datetime.date.today().isoformat()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
            raise ValueError
        datetime.date.fromisoformat(date)
    except ValueError:
        raise RecordError(f"--date {date!r} is not a date in YYYY-MM-DD form") from None
    if track not in (None, RECORD_TRACK, NON_RECORD_TRACK):
        raise RecordError(f"--track {track!r} is not {RECORD_TRACK} or {NON_RECORD_TRACK}")
    if non_record and track == RECORD_TRACK:
        raise RecordError(f"--non-record contradicts --track {RECORD_TRACK}")
    non_record = non_record or track == NON_RECORD_TRACK
    track = NON_RECORD_TRACK if non_record else RECORD_TRACK

    runs = [load_run(Path(p)) for p in logs]
    check_consistent(runs)
    script_hash = check_script(Path(script), runs)
    pack = pack_script(Path(script)) if packed else None
    if pack:
        apply_packed_sizes(runs, len(pack["packed"]), warn)
    flags, reasons = check_compliance(runs)
    if reasons and not non_record:
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
    if len({hardware_text(r.log) for r in runs}) > 1:
        warn("the seeds ran on different hardware: " + ", ".join(sorted({hardware_text(r.log) for r in runs})))
    first = runs[0].log
    cfg, path_notes = portable_paths(first["config"], Path(repo_root), first["compliance"].get("data"))
    command = command_lines(cfg, first["config_defaults"], [r.seed for r in runs],
                            first["hardware"].get("world_size", "8"))
    extra = extra_requirements(Path(requirements) if requirements else Path(repo_root) / "requirements.txt")
    blurb = blurb or technique_summary(first["config"], first["export_label"])
    meta = {"name": name, "author": author, "github_id": github_id, "blurb": blurb, "date": date, "track": track}
    sub = build_submission(runs, meta, flags, sig, pack)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for r in runs:
            shutil.copyfile(r.path, tmp / f"train_seed{r.seed}.log")
        if pack:
            (tmp / "train_gpt.py").write_bytes(pack["packed"])
        else:
            shutil.copyfile(script, tmp / "train_gpt.py")
        if extra:
            (tmp / "requirements.txt").write_text("\n".join(extra) + "\n")
        plotted = plot_val_bpb(runs, tmp / "val_bpb.png")
        (tmp / "submission.json").write_text(json.dumps(sub, indent=2) + "\n")
        readme = build_readme(runs, sub, meta, reasons, sig, plotted, script_hash, command=command,
                              path_notes=path_notes, packed=pack, requirements=extra)
        (tmp / "README.md").write_text(readme + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


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
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
    return values


def main(argv: list[str] | None = None) -> int:
    p = _Parser(description="Write records/<track>/<date>_<name>/ from the train logs of one configuration.")
    p.add_argument("logs", nargs="+", type=Path, help="logs/<RUN_ID>.txt of each seed")
    p.add_argument("--name", required=True, help="record name (letters, digits, . _ -); the folder is <date>_<name>")
    p.add_argument("--author", default="")
    p.add_argument("--github-id", default="")
    p.add_argument("--blurb", default="", help="one paragraph for submission.json and the README")
    p.add_argument("--date", default=None, help="YYYY-MM-DD (default: today)")
    p.add_argument("--track", choices=(RECORD_TRACK, NON_RECORD_TRACK), default=None,
                   help=f"default {RECORD_TRACK}, or {NON_RECORD_TRACK} with --non-record")
    p.add_argument("--non-record", action="store_true",
                   help="file a run that is not a record (failed or missing checks) in the non-record track")
    prev = p.add_mutually_exclusive_group()
    prev.add_argument("--prev-record-bpb", type=_floats, default=None, help="previous record's per-seed val_bpb")
    prev.add_argument("--prev-record-loss", type=_floats, default=None, help="previous record's per-seed val_loss")
    p.add_argument("--out-root", type=Path, default=DEFAULT_OUT_ROOT, help="default: the records/ folder of this repo")
    p.add_argument("--script", type=Path, default=DEFAULT_SCRIPT, help="the train_gpt.py that ran (default: repo's)")
    p.add_argument("--packed", action="store_true",
                   help="write the packed (self-extracting) form of --script as train_gpt.py and count its bytes; "
                        "imports --script for its pack_source, so torch must be installed")
    p.add_argument("--force", action="store_true", help="replace an existing record folder")
    a = p.parse_args(argv)
    try:
        folder = make_record(a.logs, name=a.name, out_root=a.out_root, script=a.script, author=a.author,
                             github_id=a.github_id, blurb=a.blurb, date=a.date, track=a.track,
                             non_record=a.non_record, prev_record_bpb=a.prev_record_bpb,
                             prev_record_loss=a.prev_record_loss, force=a.force, packed=a.packed)
    except RecordError as e:
        print(f"make_record: error: {e}", file=sys.stderr)
        return 2
    sub = json.loads((folder / "submission.json").read_text())
    print(f"wrote {folder}")
    print(f"val_bpb {sub['val_bpb']:.8f} (std {_fmt(sub['val_bpb_std'])}) over seeds {sub['seeds']}, "
          f"bytes_total {sub['bytes_total']}")
    if "significance" in sub:
        s = sub["significance"]
        print(f"significance: delta {s['delta_nats']:.5f} nats, p = {s['p_value']:.4g} "
              f"({'passes' if s['passes_p01'] else 'does not pass'} p < 0.01)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
