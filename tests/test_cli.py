import subprocess
import sys

import pytest

from distforget.cli import main as cli_main


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd)


def test_bad_input_is_one_line_and_status_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("forget:\n  lr: [oops\nremind: {}\n")
    proc = run("distforget.unlearn", "--config", str(bad), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not valid YAML at line" in lines[0]
    assert not (tmp_path / "unlearn.json").exists() and not (tmp_path / "distforget_runs").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = run("distforget.search", "forget.lrr=1", "--debug", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    assert "unknown key forget.lrr" in proc.stderr
    assert not (tmp_path / "distforget_runs").exists()


def test_console_script_dispatches(capsys):
    assert cli_main(["--help"]) == 0
    assert "search" in capsys.readouterr().out
    assert cli_main(["nope"]) == 2
    with pytest.raises(SystemExit):
        cli_main(["unlearn", "--help"])
