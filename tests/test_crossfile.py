"""What one file says about another, and about itself, checked before anything runs:
`workflow:` targets, the params a child gets, the outputs read from it, `after`
targets, undeclared params/env/secrets; and plain-words hints for YAML syntax errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from runner.dsl.loader import load_text
from runner.gitops.catalog import Catalog

PARENT = """\
triggers:
  after: {workflow: ingets}
steps:
  - id: call
    workflow: no-such-workflow
  - id: call2
    workflow: child
    params: {m: 1, n: "x"}
  - id: use
    log: "{{ steps.call2.output.totl }}"
"""
CHILD = """\
params:
  n: {type: integer}
  must: {type: string, required: true}
outputs: {total: "{{ steps.a.output }}"}
steps: [{id: a, log: hi}]
"""
INGEST = "steps: [{id: load, log: loaded}]\n"


def _folder(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_every_cross_file_problem_is_reported_with_its_position_and_a_fix(tmp_path: Path) -> None:
    catalog = Catalog(_folder(tmp_path, {"parent.yaml": PARENT, "child.yaml": CHILD, "ingest.yaml": INGEST}))
    catalog.load_all()
    assert [str(p) for p in catalog.problems()] == [
        "parent.yaml:2:21: triggers.after: there is no workflow 'ingets' to follow; did you mean 'ingest'?",
        "parent.yaml:5:15: steps[0].workflow: there is no workflow 'no-such-workflow'; add its file to the "
        "definitions folder",
        "parent.yaml:8:13: steps[1]: workflow 'child' requires param must; pass it under `params:`",
        "parent.yaml:8:14: steps[1].params.m: workflow 'child' has no param 'm'; it takes must, n",
        "parent.yaml:8:23: steps[1].params.n: does not fit param 'n' of workflow 'child': expected an integer, "
        "got \"x\"",
        "parent.yaml:10:10: steps[2].log: refers to steps.call2.output.totl, but workflow 'child' has no output "
        "'totl'; did you mean 'total'?",
    ]
    assert not catalog.get("parent").valid and catalog.get("child").valid


def test_a_fixed_parent_is_valid_and_a_child_without_outputs_returns_its_last_steps(tmp_path: Path) -> None:
    good = PARENT.replace("ingets", "ingest").replace("no-such-workflow", "ingest").replace(
        "{m: 1, n: \"x\"}", "{must: go, n: 3}").replace("totl", "total")
    child_without_outputs = CHILD.replace('outputs: {total: "{{ steps.a.output }}"}\n', "")
    catalog = Catalog(_folder(tmp_path, {"parent.yaml": good, "child.yaml": CHILD, "ingest.yaml": INGEST}))
    catalog.load_all()
    assert catalog.problems() == [] and catalog.get("parent").valid
    (tmp_path / "child.yaml").write_text(child_without_outputs)  # the parent breaks when its child changes
    catalog.load_all()
    [problem] = catalog.problems()
    assert problem.message.endswith("workflow 'child' has no output 'total'; it returns a")


def test_undeclared_params_env_and_secrets_are_reported_at_load() -> None:
    definition = load_text(textwrap.dedent("""\
        params: {name: string}
        env: {API: "http://x"}
        secrets: [TOKEN]
        steps:
          - id: a
            run: 'echo {{ params.nmae }} {{ env.APi }} {{ secrets.TOKN }} {{ params.name }} {{ secrets.OTHER }}'
            env: {X: "{{ trigger.name }}"}
    """), "w.yaml")
    assert [p.message for p in definition.problems] == [
        "steps[0].run: refers to params.nmae, but the workflow declares no param 'nmae'; did you mean 'name'?",
        "steps[0].run: refers to env.APi, but the workflow declares no env variable 'APi'; did you mean 'API'?",
        "steps[0].run: refers to secrets.TOKN, but the workflow declares no secret 'TOKN'; did you mean 'TOKEN'?",
        "steps[0].run: refers to secrets.OTHER, but the workflow declares no secret 'OTHER'; declare it under "
        "`secrets:`",
    ]


def test_yaml_syntax_errors_come_with_a_fix_in_plain_words(tmp_path: Path) -> None:
    cases = {
        "steps:\n\t- id: a\n    log: x\n": "indent with spaces: YAML does not allow tabs for indentation",
        "steps:\n  - id: a\n    log: time: 5\n": "a value that contains ': ' must be quoted",
        "steps:\n  - id: a\n    log: {{ params.x }}\n": "a template at the start of a value must be quoted",
        'steps:\n  - id: a\n    log: "unclosed\n  - id: b\n    log: x\n': "a quote is not closed",
    }
    for text, fix in cases.items():
        [problem] = load_text(text, "w.yaml").problems
        assert fix in problem.message, (text, problem.message)


def test_validate_checks_one_file_with_the_folder_it_belongs_to(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "defs" if (tmp_path / "defs").mkdir() is None else tmp_path,
                     {"parent.yaml": PARENT, "child.yaml": CHILD, "ingest.yaml": INGEST})
    done = subprocess.run([sys.executable, "-m", "runner", "validate", str(folder / "parent.yaml")],
                          capture_output=True, text=True, env={"TREADLE_DEFINITIONS": str(folder), "PATH": "/usr/bin"})
    assert done.returncode == 1
    assert "steps[0].workflow: there is no workflow 'no-such-workflow'" in done.stdout
    alone = subprocess.run([sys.executable, "-m", "runner", "validate", str(folder / "child.yaml")],
                           capture_output=True, text=True, env={"TREADLE_DEFINITIONS": str(folder), "PATH": "/usr/bin"})
    assert alone.returncode == 0, alone.stdout


def test_a_file_with_problems_of_its_own_still_gets_the_cross_file_ones(tmp_path: Path) -> None:
    own_problem = PARENT + "  - id: bad\n    log: \"{{ params.nope }}\"\n"
    catalog = Catalog(_folder(tmp_path, {"parent.yaml": own_problem, "child.yaml": CHILD, "ingest.yaml": INGEST}))
    catalog.load_all()
    messages = [p.message for p in catalog.problems()]
    assert "steps[3].log: refers to params.nope, but the workflow declares no param 'nope'; declare it under " \
           "`params:`" in messages
    assert "steps[0].workflow: there is no workflow 'no-such-workflow'; add its file to the definitions folder" \
        in messages
    assert len(messages) == 7


def test_validate_server_warns_about_secrets_the_server_does_not_have(tmp_path: Path) -> None:
    from tests.web_server import serving

    secrets = tmp_path / "secrets.env"
    secrets.write_text("HAVE=s3cr3t-value\n")
    secrets.chmod(0o600)
    flow = "secrets: [HAVE, LACK]\nsteps: [{id: a, run: 'echo {{ secrets.HAVE }} {{ secrets.LACK }}'}]\n"
    with serving(tmp_path / "server", {"flow.yaml": flow}, secrets_file=secrets) as base:
        local = _folder(tmp_path / "local" if (tmp_path / "local").mkdir() is None else tmp_path, {"flow.yaml": flow})
        done = subprocess.run([sys.executable, "-m", "runner", "validate", str(local), "--server", base],
                              capture_output=True, text=True, env={"PATH": "/usr/bin"})
    assert done.returncode == 0, done.stdout + done.stderr  # a warning, not a problem
    assert done.stdout.splitlines() == [
        f"{local}/flow.yaml:1:17: warning: secrets[1]: {base} does not have secret 'LACK'; set it there "
        "(environment or --secrets-file) before a run needs it"]
    assert "s3cr3t" not in done.stdout + done.stderr
    gone = subprocess.run([sys.executable, "-m", "runner", "validate", str(local), "--server", "http://127.0.0.1:9"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin"})
    assert gone.returncode == 2 and "cannot reach it" in gone.stderr
