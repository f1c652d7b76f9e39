"""The table the bench prints, its targets and the notes under it: functions of the JSON only.

A row's target is either absolute ("abs": ≤ 400 ms) or relative to a peer
(≤ 1.15 x mpi4py); a target whose reference was skipped or not measured is
"n/a", never met. The notes say how the run was made and whether its
figures can be trusted: a busy machine, an error, a wrong answer.
"""

from __future__ import annotations

from typing import Any

from benchlib.loadwatch import BURST_CORES, QUIET_CORES
from benchlib.peers import PEERS
from benchlib.rows import Row, fmt


def evaluate(row: Row, skipped: dict[str, str]) -> tuple[str, str, str, list[dict[str, Any]]]:
    """(ratio cell, target cell, met cell, machine-readable checks)."""
    ratios, targets, verdicts, checks = [], [], [], []
    for ref, factor in row.checks:
        ratio_cell, target, verdict, check = _check(row, ref, factor, skipped)
        if ratio_cell is not None:
            ratios.append(ratio_cell)
        targets.append(target)
        verdicts.append(verdict)
        checks.append(check)
    return "; ".join(ratios) or "—", "; ".join(targets), _met_cell(verdicts), checks


def _check(
    row: Row, ref: str, factor: float, skipped: dict[str, str]
) -> tuple[str | None, str, str, dict[str, Any]]:
    """One target of a row: (ratio cell or None, target cell, verdict, machine-readable check)."""
    mine = row.values.get("distnode")
    op = "≥" if row.higher_better else "≤"
    absolute = ref == "abs"
    target = f"{op} {fmt(factor, row.unit)}" if absolute else f"{op} {factor:g} x {ref}"
    reference = factor if absolute else row.values.get(ref)
    check: dict[str, Any] = {"reference": ref, "factor": factor, "value": mine}
    if mine is None or reference is None:
        check["met"] = None
        return None, target, f"n/a ({f'{ref} skipped' if ref in skipped else 'no value'})", check
    ratio = row.round_ratios.get(ref) or (mine / reference if reference else None)
    if absolute:
        met = mine >= reference if row.higher_better else mine <= reference
        ratio_cell = None if ratio is None else f"{ratio:.2f}x target"
    else:
        met = ratio is not None and ratio <= factor
        rounds = " (rounds)" if ref in row.round_ratios else ""
        ratio_cell = f"{ratio:.2f}x {ref}{rounds}" if ratio is not None else f"? x {ref}"
    check.update(ratio=ratio, met=met)
    return ratio_cell, target, "yes" if met else f"**NO**{'' if absolute else f' (vs {ref})'}", check


def _met_cell(verdicts: list[str]) -> str:
    if not verdicts:
        return "—"  # shown for reference, no target
    if all(v == "yes" for v in verdicts):
        return "yes"
    if any(v.startswith("**NO**") for v in verdicts):
        return "; ".join(v for v in verdicts if v != "yes")
    return "; ".join(verdicts)


def targets(rows: list[Row], skipped: dict[str, str]) -> dict[str, Any]:
    """The JSON's `targets`: per row its values, each check and whether the row met its targets."""
    out = {}
    for row in rows:
        _, _, met, checks = evaluate(row, skipped)
        out[row.key] = {"label": row.label, "unit": row.unit, "values": row.values,
                        "checks": checks, "met": met}
    return out


def render_table(rows: list[Row], skipped: dict[str, str]) -> str:
    """The markdown table: figure, distnode, each peer, ratio, target, met?"""
    header = ["figure", "distnode", *[f"{n} (1 proc)" if n == "numpy" else n for n in PEERS],
              "ratio", "target", "met?"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        ratio, target, met, _ = evaluate(row, skipped)
        label = row.label + (f" ({row.note})" if row.note else "")
        cells = [label, fmt(row.values.get("distnode"), row.unit)]
        for name in PEERS:
            value = row.values.get(name)
            if value is None and name in skipped and (name in row.applies or name in row.values):
                cells.append("skipped")
            else:
                cells.append(fmt(value, row.unit))
        cells += [ratio, target, met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def result_notes(res: dict[str, Any]) -> list[str]:
    """The notes under the table about the run itself (where the files went is added by the caller)."""
    p, env = res["params"], res["environment"]
    notes = [f"{'quick' if p['quick'] else 'full'} run: big n={p['n']:,} ({p['n'] * 8 / 1e6:.0f} MB), "
             f"{p['reps']} timed reps after {p['warmup']} warm-up (medians), {p['small_jobs']} small jobs, "
             f"{env['nproc']} CPUs, python {env['python']}, took {res['total_s']:.0f} s"]
    for name, why in res["skipped"].items():
        notes.append(f"skipped {name}: {why.splitlines()[0] if why else ''}")
    notes.append(_load_note(res["machine_load"]))
    for where, what in res["errors"].items():
        notes.append(f"error in {where}: {what.splitlines()[0]}")
    problems = res["answer_problems"]
    notes.append("answers: " + ("all checked answers agree (rel 1e-9, bit-identical across the kill)"
                                if not problems else "; ".join(problems)))
    return notes


def _load_note(machine_load: dict[str, Any]) -> str:
    phases = {k: v for k, v in machine_load.items() if k != "samples"}
    busy = {k: v for k, v in phases.items()
            if v["foreign_cores_mean"] > QUIET_CORES or v["foreign_cores_max"] > BURST_CORES
            or v.get("steal_cores_mean", 0.0) > QUIET_CORES}
    if not busy:
        return (f"machine quiet: other processes used < {QUIET_CORES} core on average and < {BURST_CORES}"
                f" in any sample, and the host stole < {QUIET_CORES} core, in every phase")
    said = ", ".join(f"'{k}' {v['foreign_cores_mean']:.2f} (max {v['foreign_cores_max']:.2f}, stolen"
                     f" {v.get('steal_cores_mean', 0.0):.2f})" for k, v in busy.items())
    return (f"**machine not quiet**: other processes' cores on average, at most, and the host's steal during"
            f" {said}; those figures are suspect (machine_load in the JSON names the processes)")
