"""Functions for `data-pipeline.yaml`: plain functions, JSON in and JSON out.

A `python` step calls `module:function` with the step's `with:` mapping as keyword
arguments; the return value (anything JSON can hold) becomes the step's output.
A function that names a `ctx` parameter also receives the step context (run id,
step id, attempt, idempotency key, and `ctx.log()` to write to the step's log).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def totals_by_customer(orders: list[dict[str, Any]], currency: str = "EUR") -> dict[str, Any]:
    """Sum order amounts per customer, largest first."""
    totals: dict[str, float] = defaultdict(float)
    for order in orders:
        totals[order["customer"]] += float(order["amount"])
    customers = [
        {"customer": name, "total": round(total, 2)}
        for name, total in sorted(totals.items(), key=lambda kv: kv[1], reverse=True)
    ]
    return {
        "currency": currency,
        "orders": len(orders),
        "customers": customers,
        "grand_total": round(sum(totals.values()), 2),
    }


def render_report(summary: dict[str, Any], verdict: str, ctx: Any = None) -> str:
    """A short plain-text report; also written to the step's log."""
    lines = [f"{summary['orders']} orders, {summary['grand_total']} {summary['currency']} ({verdict})"]
    lines += [f"  {c['customer']:<10} {c['total']:>8}" for c in summary["customers"]]
    text = "\n".join(lines)
    if ctx is not None:
        ctx.log(text + "\n")
    return text
