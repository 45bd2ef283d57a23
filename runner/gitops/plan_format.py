"""A plan (plan.py) drawn for people: a terminal view in the spirit of `terraform plan`
(`+` added, `-` removed, `~` changed, `!` breaks and problems), markdown for a
pull-request comment, GitHub Actions annotations."""

from __future__ import annotations

import json
from typing import Any

SIGN = {"added": "+", "removed": "-", "changed": "~"}


def summary(plan: list[dict[str, Any]]) -> str:
    counts = {c: sum(1 for e in plan if e["change"] == c) for c in ("added", "changed", "removed")}
    breaks = sum(len(e["breaks"]) + e["hidden_breaks"] for e in plan)
    problems = sum(len(e["problems"]) for e in plan if e["change"] != "removed")
    if not plan:
        return "No changes: the workflows mean the same in both revisions."
    return (f"Plan: {counts['added']} to add, {counts['changed']} to change, {counts['removed']} to remove; "
            f"{breaks} break{'s' * (breaks != 1)}, {problems} problem{'s' * (problems != 1)}.")


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit - 1] + "…"


def lines_of(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """(sign, text) for each thing that changed in one workflow, in reading order."""
    out: list[tuple[str, str]] = []
    steps = entry["steps"]
    if entry["change"] == "added":
        out.append(("+", f"steps: {', '.join(steps['added'])}" if steps["added"] else "steps: none that parse"))
    elif entry["change"] == "removed":
        out.append(("-", f"steps: {', '.join(steps['removed'])}"))
    else:
        if entry.get("moved_from"):
            out.append(("~", f"file moved from {entry['moved_from']}"))
        out += [("+", f"step {s}") for s in steps["added"]]
        out += [("-", f"step {s}") for s in steps["removed"]]
        out += [("~", f"step {c['id']}: {', '.join(c['fields'])}") for c in steps["changed"]]
        out += [("+", f"dependency {d['from']} -> {d['to']}") for d in steps["dependencies"]["added"]]
        out += [("-", f"dependency {d['from']} -> {d['to']}") for d in steps["dependencies"]["removed"]]
    params = entry["params"]
    shown = [f"{p['name']} ({p['type']}{', required' if p['required'] else ''})" for p in params["added"]]
    if entry["change"] != "added":
        out += [("+", f"param {p}") for p in shown]
    elif shown:
        out.append(("+", f"params: {', '.join(shown)}"))
    out += [("-", f"param {p}") for p in params["removed"]]
    for change in params["changed"]:
        what = []
        if "retyped" in change:
            what.append(f"type {change['retyped']['from']} -> {change['retyped']['to']}")
        if "required" in change:
            what.append("now required" if change["required"] else "no longer required")
        rest = [f for f in change["fields"] if f not in ("type", "required") and not
                (f == "default" and "required" in change)]
        what += rest
        out.append(("~", f"param {change['name']}: {', '.join(what)}"))
    triggers = entry["triggers"]
    for kind in triggers["changed"]:
        if kind == "schedule" and triggers["schedules"] is not None:
            crons = {s["cron"] for s in triggers["schedules"]["before"]}, {s["cron"] for s in triggers["schedules"]["after"]}
            out.append(("~" if all(crons) else ("+" if crons[1] else "-"),
                        f"schedule: {', '.join(sorted(crons[0])) or 'none'} -> {', '.join(sorted(crons[1])) or 'none'}"))
            for side in ("before", "after"):
                for s in triggers["schedules"][side]:
                    times = ", ".join(t[:16].replace("T", " ") for t in s["next"]) or "never fires"
                    out.append((" ", f"  next {side + ':':7} {times} ({s['timezone']})"))
        else:
            out.append(("~", f"trigger {kind} changed"))
    for setting in entry["settings"]:
        out.append(("~", f"{setting['field']}: {_short(setting['before'])} -> {_short(setting['after'])}"))
    for b in entry["breaks"]:
        out.append(("!", f"breaks {b['workflow']}: {b['path']}:{b['line']}:{b['column']}: {b['message']}"))
    if entry["hidden_breaks"]:
        out.append(("!", f"breaks {entry['hidden_breaks']} workflow file(s) outside your namespaces"))
    if entry["change"] != "removed":
        out += [("!", f"problem {p['path']}:{p['line']}:{p['column']}: {p['message']}") for p in entry["problems"]]
    return out


def as_text(plan: list[dict[str, Any]], base: str, head: str) -> str:
    out = [f"Treadle plan: {base} -> {head}", ""]
    for entry in plan:
        out.append(f"{SIGN[entry['change']]} {entry['name']} ({entry['path']})")
        out += [f"    {sign} {text}" for sign, text in lines_of(entry)]
        out.append("")
    out.append(summary(plan))
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    # a definition's text is untrusted in a pull request: no markup, no mentions, no HTML
    return "".join("\\" + c if c in "\\`*_{}[]()<>#+-.!|@~" else c for c in text)


def as_markdown(plan: list[dict[str, Any]], base: str, head: str) -> str:
    out = [f"### Treadle plan: {_md(base)} → {_md(head)}", "", _md(summary(plan)), ""]
    if plan:
        out += ["| workflow | change | steps +/−/~ | breaks | problems |", "|---|---|---|---|---|"]
        for e in plan:
            s = e["steps"]
            out.append(f"| {_md(e['name'])} | {e['change']} | {len(s['added'])}/{len(s['removed'])}/{len(s['changed'])} "
                       f"| {len(e['breaks']) + e['hidden_breaks']} | {len(e['problems']) if e['change'] != 'removed' else 0} |")
        out.append("")
    for entry in plan:
        out += [f"<details{' open' if entry['breaks'] or entry['problems'] else ''}><summary>"
                f"{SIGN[entry['change']]} <b>{_html(entry['name'])}</b> ({_html(entry['path'])})</summary>", "",
                "```diff"]
        out += [f"{'!' if sign == '!' else sign} {text}".replace("```", "`\u200b``") for sign, text in lines_of(entry)]
        out += ["```", "", "</details>", ""]
    return "\n".join(out)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def as_github(plan: list[dict[str, Any]], folder: str) -> str:
    """Annotations: an error per break and problem (on its file and line), a notice per
    changed workflow."""
    def esc(text: str) -> str:  # GitHub's workflow-command escaping
        return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    def prop(text: str) -> str:
        return esc(text).replace(":", "%3A").replace(",", "%2C")

    prefix = folder.rstrip("/") + "/" if folder not in ("", ".") else ""
    out: list[str] = []
    for entry in plan:
        changes = "; ".join(f"{s} {t}" for s, t in lines_of(entry) if s not in ("!", " "))
        out.append(f"::notice file={prop(prefix + entry['path'])},title={prop('treadle plan: ' + entry['change'] + ' ' + entry['name'])}::{esc(changes or entry['change'])}")
    errors = [item for e in plan for item in e["breaks"] + (e["problems"] if e["change"] != "removed" else [])]
    seen = set()
    for item in errors:  # a break is often also its caller's own problem: one annotation
        key = (item["path"], item["line"], item["column"], item["message"])
        if key not in seen:
            seen.add(key)
            out.append(f"::error file={prop(prefix + item['path'])},line={item['line']},col={item['column']}::{esc(item['message'])}")
    return "\n".join(out) + ("\n" if out else "")
