"""Where option values come from: command line > ENGINE_* variable > --config file > default."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.cli import cli


def write(tmp_path, text: str) -> str:
    path = tmp_path / "engine.toml"
    path.write_text(text)
    return str(path)


def shown(result) -> dict[str, str]:
    """``config show``'s lines as {key: 'value  # source'}."""
    lines = [line for line in result.stdout.splitlines() if " = " in line]
    return {line.split(" = ", 1)[0]: line.split(" = ", 1)[1] for line in lines}


@pytest.mark.parametrize(
    "flag, env, in_file, expected, source",
    [
        (("--chunks", "7"), {"ENGINE_CHUNKS": "8"}, "chunks = 9", "7", "command line"),
        ((), {"ENGINE_CHUNKS": "8"}, "chunks = 9", "8", "environment ENGINE_CHUNKS"),
        ((), {"ENGINE_BILL_CHUNKS": "6", "ENGINE_CHUNKS": "8"}, "", "6", "environment ENGINE_BILL_CHUNKS"),
        ((), {}, "[bill]\nchunks = 9", "9", "file"),
        ((), {}, "chunks = 5\n[bill]\nchunks = 9", "9", "file"),
        ((), {}, "chunks = 5", "5", "file"),
    ],
)
def test_the_command_line_wins_then_the_environment_then_the_file(run, tmp_path, flag, env, in_file, expected, source):
    config = write(tmp_path, in_file)
    result = run("--config", config, "config", "show", "bill", *flag, env=env)
    assert result.exit_code == 0, result.output
    assert shown(result)["chunks"].startswith(f"{expected}  # {source}")


def test_an_option_not_set_anywhere_shows_its_default(run, tmp_path):
    result = run("--config", write(tmp_path, "[bill]\nrate = 3"), "config", "show", "bill")
    values = shown(result)
    assert values["method"] == '"POST"  # default'
    assert values["rate"].startswith("3.0  # file")
    assert "# chunks: not set (default)" in result.stdout


def test_the_file_sets_a_real_run_and_the_flag_still_wins(run, api, customers, tmp_path):
    db = str(tmp_path / "ledger.db")
    config = write(tmp_path, f'db = "{db}"\n[bill]\nurl = "{api.charge_url()}"\nrun-id = "from-file"\nquiet = true\n')
    result = run("--config", config, "bill", customers(5), "--run-id", "from-flag")
    assert result.exit_code == 0, result.output
    assert "from-flag" in result.stdout and os.path.exists(db)


def test_precedence_holds_in_a_real_process(tmp_path):
    """The same rules when the variables are the process's own (cron, CI, Kubernetes)."""
    config = write(tmp_path, "[bill]\nchunks = 9\nrate = 4\nmax-attempts = 2\n")
    env = {**os.environ, "ENGINE_CONFIG": config, "ENGINE_RATE": "5", "ENGINE_MAX_ATTEMPTS": "3"}
    out = subprocess.run(
        [sys.executable, "-m", "engine", "config", "show", "bill", "--max-attempts", "4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    values = {line.split(" = ")[0]: line.split(" = ")[1] for line in out.stdout.splitlines() if " = " in line}
    assert values["chunks"] == f"9  # file {config}"
    assert values["rate"] == "5.0  # environment ENGINE_RATE"
    assert values["max-attempts"] == "4  # command line"


def test_a_repeated_option_takes_one_value_per_line_of_its_variable(run):
    env = {"ENGINE_HEADER": "Authorization: Bearer ${API_TOKEN}\nX-Team: billing ops"}
    result = run("config", "show", "bill", env=env)
    assert shown(result)["header"].startswith('["Authorization: Bearer ${API_TOKEN}", "X-Team: billing ops"]')


@pytest.mark.parametrize(
    "text, key",
    [
        ('[bill]\nheader = ["Authorization: Bearer sk_live_123"]', "[bill] header"),
        ('header = ["X-Api-Key: sk_live_123"]', "[bill] header"),
        ('[bill]\nsecret-header = ["X-Sig"]\nheader = ["X-Sig: abc"]', "[bill] header"),
        ('broker = "redis://:hunter2@queue:6379/0"', "[bill] broker"),
    ],
)
def test_a_secret_in_the_file_is_refused_in_one_line(run, tmp_path, text, key):
    result = run("--config", write(tmp_path, text), "config", "show", "bill")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "sk_live_123" not in lines[0] and "hunter2" not in lines[0]


def test_a_secret_header_as_a_reference_is_accepted(run, tmp_path):
    config = write(tmp_path, '[bill]\nheader = ["Authorization: Bearer ${API_TOKEN}"]')
    result = run("--config", config, "config", "show", "bill")
    assert result.exit_code == 0, result.output
    assert "${API_TOKEN}" in shown(result)["header"]


def test_an_unknown_key_or_table_is_refused(run, tmp_path):
    for text, said in (("[bill]\nchunk = 3", "chunk"), ("nonsense = 1", "nonsense"), ("[bil]\nx = 1", "bil")):
        result = run("--config", write(tmp_path, text), "config", "show")
        assert result.exit_code == 2 and said in result.stderr, text


def test_config_show_redacts_a_password_from_the_environment(run):
    result = run("config", "show", "bill", env={"ENGINE_BROKER": "redis://:hunter2@127.0.0.1:6379/0"})
    assert "hunter2" not in result.output and "[redacted]" in shown(result)["broker"]


def test_help_names_each_options_variables(run):
    result = run("bill", "--help")
    assert "ENGINE_BILL_CHUNKS, ENGINE_CHUNKS" in result.output.replace("\n", " ").replace("  ", " ") or (
        "ENGINE_CHUNKS" in result.output
    )
    assert "ENGINE_LOG_FORMAT" in run("--help").output


def test_the_top_level_options_come_from_the_file(run, tmp_path):
    result = run("--config", write(tmp_path, 'log-format = "json"'), "config", "show")
    assert shown(result)["log-format"].startswith('"json"  # file')


def test_cli_is_importable():
    assert "config" in cli.list_commands(None)
