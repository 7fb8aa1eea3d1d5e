"""Measurement: what the engine actually did, next to what it could have done.

    launches  torch.profiler: CPU launch calls vs GPU kernels per step     (measured)
    timeline  torch.profiler: a step's CPU ops, launch calls and GPU kernels, drawn (measured)
    breakdown a decode step's time by kernel family, gaps and host time    (measured)
    hbm       Nsight Compute: DRAM bytes read/written per kernel family   (measured)
    roofline  bytes and FLOPs a step must move/do, and the time they take (modelled, labelled)

Every record is a dataclass with `.to_dict()` (JSON-able). A measurement that cannot be taken
here (no GPU, no ncu, counters not permitted) comes back with `available=False` and a reason
that says how to fix it -- never a number. Modelled records carry `modelled=True`.
"""
from __future__ import annotations

from .hbm import (DEFAULT_METRICS, HbmRecord, KernelMetrics, classify_kernel, measure_hbm_python,
                  ncu_status, parse_ncu_csv, run_ncu)
from .launches import LaunchRecord, count_launches
from .roofline import (AttentionTraffic, BandwidthRecord, ParamCount, StepModel,
                       attention_traffic_model, count_params, decode_step, kv_bytes_per_token,
                       measure_copy_bandwidth, prefill_step, weight_bytes_read)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table_cells(records, columns: list[str] | None = None) -> list[list[str]]:
    """Records (dataclasses with to_dict, or dicts) as rows of formatted cells, header row first.
    Columns default to the scalar fields of the records, in order of first appearance.
    Modelled rows say so in a "kind" column."""
    rows = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in records]
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k, v in row.items() if k not in columns and k != "modelled"
                        and not isinstance(v, (list, dict, tuple))]
    if any("modelled" in row for row in rows):
        columns = ["kind"] + columns
        for row in rows:
            row["kind"] = "modelled" if row.get("modelled") else "measured"
    return [list(columns)] + [[_cell(row.get(c)) for c in columns] for row in rows]


def format_table(records, columns: list[str] | None = None) -> str:
    """A plain-text table of records, one row per record (`table_cells`). Returns the text; print() it."""
    table = table_cells(records, columns)
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.rjust(w) if j else cell.ljust(w)
                       for j, (cell, w) in enumerate(zip(line, widths))) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


__all__ = [
    "AttentionTraffic", "BandwidthRecord", "DEFAULT_METRICS", "HbmRecord", "KernelMetrics",
    "LaunchRecord", "ParamCount", "StepModel", "attention_traffic_model",
    "classify_kernel", "count_launches", "count_params", "decode_step", "format_table", "table_cells",
    "kv_bytes_per_token", "measure_copy_bandwidth", "measure_hbm_python", "ncu_status",
    "parse_ncu_csv", "prefill_step", "run_ncu", "weight_bytes_read",
]
