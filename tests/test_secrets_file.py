"""`--secrets-file`: a dotenv file of secrets for `treadle run` and `treadle serve`, the
environment winning over it; its values are used by runs and never shown."""

from __future__ import annotations

import base64
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.security.secrets_file import SecretsFileError, read_secrets_file, with_secrets_file
from tests.test_examples import Cli
from tests.web_server import serving

FILE_SECRET = "file-Secret-value-9137"
ENV_SECRET = "env-Secret-value-2684"
NAME = "TREADLE_TEST_FILE_TOKEN"  # never set in the environment the tests run in

DOTENV = f"""\
# secrets for the tests
{NAME}={FILE_SECRET}
export QUOTED="two words # not a comment"
SINGLE='no ${{EXPANSION}} here'
EMPTY=
NO_VALUE
"""


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# -- reading the file ------------------------------------------------------------


def test_the_file_is_read_as_dotenv_values_taken_as_written(tmp_path: Path) -> None:
    values = read_secrets_file(write(tmp_path / "s.env", DOTENV))
    assert values == {NAME: FILE_SECRET, "QUOTED": "two words # not a comment",
                      "SINGLE": "no ${EXPANSION} here", "EMPTY": ""}


def test_the_environment_wins_over_the_file_unless_empty_there(tmp_path: Path) -> None:
    path = write(tmp_path / "s.env", f"A=from-file\nB=from-file\nC=from-file\n{NAME}={FILE_SECRET}\n")
    merged = with_secrets_file(path, {"A": "from-env", "B": "", "PATH": "/bin"})
    assert merged == {"A": "from-env", "B": "from-file", "C": "from-file", NAME: FILE_SECRET, "PATH": "/bin"}
    assert with_secrets_file(None) is None  # no file: the engine reads the live environment


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.env", "secrets file '{path}' not found"),
    (lambda d: d, "secrets file '{path}' is a folder, not a file"),
    (lambda d: write(d / "bad.env", f"GOOD=1\nthis is {FILE_SECRET}\n"),
     "secrets file '{path}': cannot read the line starting at line 2; write KEY=value"),
])
def test_a_file_that_cannot_be_used_is_a_clear_error_without_values(tmp_path: Path, make: Any, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(SecretsFileError) as caught:
        with_secrets_file(path, {})
    assert str(caught.value) == message.format(path=path)
    assert FILE_SECRET not in str(caught.value)
    assert caught.value.cli_exit_code == 2


# -- treadle run -----------------------------------------------------------------


WORKFLOW = f"""\
secrets: [{NAME}]
params: {{out: string}}
steps:
  - id: use
    env: {{T: "{{{{ secrets.{NAME} }}}}"}}
    run: 'printf "%s" "$T" > "{{{{ params.out }}}}"; echo "token $T"; echo "inherited ${{{NAME}:-no}}"'
"""


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every `treadle` command of this module at once (each is a Python start-up)."""
    root = tmp_path_factory.mktemp("secrets-cli")
    cli = Cli(root)
    (root / "definitions").mkdir()
    (root / "definitions" / "use.yaml").write_text(WORKFLOW)
    secrets = write(root / "secrets.env", DOTENV, 0o644)
    bad = write(root / "bad.env", f"ok=1\nthis is {FILE_SECRET}\n")
    common = ("--definitions", str(root / "definitions"), "--db", cli.db)
    outs = {key: root / f"{key}.out" for key in ("flag", "env_wins", "env_var")}
    calls = {
        "flag": (("run", "use", "-p", f"out={outs['flag']}", "--secrets-file", str(secrets), *common), {}),
        "env_wins": (("run", "use", "-p", f"out={outs['env_wins']}", "--secrets-file", str(secrets), *common),
                     {NAME: ENV_SECRET}),
        "env_var": (("run", "use", "-p", f"out={outs['env_var']}", "--json", *common),
                    {"TREADLE_SECRETS_FILE": str(secrets)}),
        "missing": (("run", "use", "-p", "out=x", "--secrets-file", str(root / "nope.env"), *common), {}),
        "malformed": (("run", "use", "-p", "out=x", "--secrets-file", str(bad), *common), {}),
        "no_file": (("run", "use", "-p", "out=x", *common), {}),
        "serve_missing": (("serve", "--secrets-file", str(root / "nope.env"), "--port", "1", *common), {}),
    }
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {k: pool.submit(cli, *args, env=env) for k, (args, env) in calls.items()}
        results = {k: f.result() for k, f in futures.items()}
    return {"root": root, "results": results, "outs": outs, "db": cli.db, "cli": cli}


def test_run_uses_the_secrets_file(cli_runs: dict[str, Any]) -> None:
    done: subprocess.CompletedProcess = cli_runs["results"]["flag"]
    assert done.returncode == 0, done.stderr
    assert cli_runs["outs"]["flag"].read_text() == FILE_SECRET
    assert FILE_SECRET not in done.stdout + done.stderr
    assert "can be read by other users (mode 0644); chmod 600 it" in done.stderr


def test_the_environment_wins_over_the_secrets_file(cli_runs: dict[str, Any]) -> None:
    done = cli_runs["results"]["env_wins"]
    assert done.returncode == 0, done.stderr
    assert cli_runs["outs"]["env_wins"].read_text() == ENV_SECRET


def test_the_secrets_file_can_come_from_treadle_secrets_file(cli_runs: dict[str, Any]) -> None:
    done = cli_runs["results"]["env_var"]
    assert done.returncode == 0, done.stderr
    assert cli_runs["outs"]["env_var"].read_text() == FILE_SECRET
    assert FILE_SECRET not in done.stdout


def test_secrets_file_values_stay_out_of_steps_environments(cli_runs: dict[str, Any]) -> None:
    shown = cli_runs["cli"]("show", "--logs", "--db", cli_runs["db"], _run_id(cli_runs["results"]["flag"].stderr))
    assert "| token ***" in shown.stdout
    assert "| inherited no" in shown.stdout  # not added to the process environment of steps
    assert FILE_SECRET not in shown.stdout


def _run_id(stderr: str) -> str:
    line = next(line for line in stderr.splitlines() if line.startswith("run ") and " of use " in line)
    return line.split()[1]


@pytest.mark.parametrize("key, message", [
    ("missing", "treadle: secrets file '{root}/nope.env' not found\n"),
    ("malformed", "treadle: secrets file '{root}/bad.env': cannot read the line starting at line 2; write KEY=value\n"),
    ("serve_missing", "treadle serve: secrets file '{root}/nope.env' not found\n"),
])
def test_a_bad_secrets_file_stops_before_anything_runs_with_exit_code_2(
        cli_runs: dict[str, Any], key: str, message: str) -> None:
    done = cli_runs["results"][key]
    assert (done.returncode, done.stderr) == (2, message.format(root=cli_runs["root"]))
    assert FILE_SECRET not in done.stdout + done.stderr


def test_without_the_file_the_secret_is_missing(cli_runs: dict[str, Any]) -> None:
    done = cli_runs["results"]["no_file"]
    assert done.returncode == 2 and f"secret {NAME} not set" in done.stderr


# -- treadle serve ---------------------------------------------------------------


def test_serve_reads_the_secrets_file_and_the_api_shows_only_masked_values(tmp_path: Path) -> None:
    """Settings.secrets_file reaches the engine; the run, its params, log and events
    seen through the API hold *** where the secret was."""
    secrets = write(tmp_path / "secrets.env", f"{NAME}='{FILE_SECRET}'\n")
    out = tmp_path / "used.txt"
    with serving(tmp_path, {"use.yaml": WORKFLOW}, watch=False, secrets_file=secrets) as base, \
            httpx.Client(base_url=base, timeout=10) as client:
        started = client.post("/api/workflows/use/runs", json={"params": {"out": f"{out}#{FILE_SECRET}"}})
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        deadline = time.monotonic() + 20
        while (run := client.get(f"/api/runs/{run_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, run
            time.sleep(0.05)
        log = client.get(f"/api/runs/{run_id}/steps/use/logs").text
        events = client.get(f"/api/runs/{run_id}/events").text
    assert run["status"] == "succeeded", run
    assert Path(f"{out}#{FILE_SECRET}").read_text() == FILE_SECRET  # the file's value was used
    assert run["params"] == {"out": f"{out}#***"}
    assert run["steps"][0]["input"]["env"] == {"T": "***"}
    assert "token ***\n" in log
    assert "event: run" in events and "token ***" in events
    everything = run.__repr__() + log + events
    for form in (FILE_SECRET, base64.b64encode(FILE_SECRET.encode()).decode()):
        assert form not in everything
