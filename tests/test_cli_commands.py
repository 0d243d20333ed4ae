"""The command line as a user meets it: ``distforget --version``, ``python -m distforget``, usage
lines that name the command as it was started, ``config show``, ``--help`` without torch."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

import distforget
from distforget.cli import COMMANDS, main as cli_main
from distforget.config import RunConfig, load_config
from distforget.configdoc import field_comments, show

CONFIG_COMMANDS = ("search", "unlearn", "pretrain", "config")


def run(*args, cwd=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd)


def test_version_names_distforget_and_its_libraries(capsys):
    assert cli_main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"distforget {distforget.__version__} (")
    assert "torch " in out and "open_clip_torch " in out and "ray " in out


def test_python_dash_m_distforget_is_the_console_script():
    proc = run("-m", "distforget", "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("distforget ")
    proc = run("-m", "distforget", "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: python -m distforget [--version] <command>")
    for name in COMMANDS:
        assert f"\n  {name} " in proc.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_usage_line_names_the_command_as_started(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli_main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: distforget {name} ")


def test_the_module_form_names_the_module():
    proc = run("-m", "distforget.search", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m distforget.search ")
    proc = run("-m", "distforget", "export", "--help")
    assert proc.stdout.startswith("usage: python -m distforget export ")


def test_an_unknown_command_is_one_line_with_a_suggestion(capsys):
    assert cli_main(["serch"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'serch' (did you mean 'search'?)" in err
    assert cli_main([]) == 2


@pytest.mark.parametrize("name", CONFIG_COMMANDS)
def test_help_lists_the_config_sections_and_points_at_config_show(name, capsys):
    with pytest.raises(SystemExit):
        cli_main([name, "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(RunConfig):
        assert f"\n  {f.name} " in out, f.name
    assert "distforget config show" in out


def test_no_command_imports_torch_open_clip_ray_pandas_or_optuna_for_its_help():
    # What made `--help` take 7 to 12 s; every command answers in a fraction of a second now.
    code = ("import sys\n"
            "from distforget.cli import COMMANDS, main\n"
            "for name in COMMANDS:\n"
            "    try:\n"
            "        main([name, '--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'open_clip', 'ray', 'pandas', 'optuna')\n"
            "                      if m in sys.modules))")
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_importing_distforget_still_registers_its_architectures_with_open_clip():
    code = ("import sys, distforget\n"
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules\n"
            "import open_clip\n"
            "print('DF-RN-Tiny-32' in open_clip.list_models(), "
            "'DF-ViT-Tiny-32' in open_clip.list_models())")
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


def test_config_show_prints_a_config_that_loads_back_to_the_same_run(tmp_path, capsys):
    src = tmp_path / "run.yaml"
    src.write_text("forget: {lr: 3.0e-4}\nscenario: {retain_classes: [square]}\n")
    # Options and overrides in any order.
    assert cli_main(["config", "show", "search.num_trials=3", "--config", str(src),
                     "restore.grid=[0.0, 0.5, 1.0]"]) == 0
    out = capsys.readouterr().out
    shown = tmp_path / "shown.yaml"
    shown.write_text(out)
    expected = load_config(src, ["search.num_trials=3", "restore.grid=[0.0, 0.5, 1.0]"])
    assert load_config(shown) == expected
    assert yaml.safe_load(out)["forget"]["lr"] == 3e-4


def test_config_show_puts_each_keys_comment_from_config_py_above_it():
    text = show(RunConfig(), "the embedded default")
    lines = text.splitlines()
    at = lines.index("  pretrained: embedded  # a string")
    comment = field_comments(type(RunConfig().model))["pretrained"]
    assert comment and comment[0].startswith("An open_clip pretrained tag")
    assert lines[at - len(comment):at] == [f"  # {c}" for c in comment]
    # Sections carry their docstring; keys say what they accept.
    assert "# Stage 1: relative-Fisher layer selection" in text
    assert "  lr: 0.001  # a number > 0 and <= 1" in text
    assert "  ema_decay: 0.9  # a number > 0 and < 1, or null" in text


def test_comments_are_read_from_the_source_not_copied(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Probe:
        # First line of a comment,
        # and its second line.
        a: int = 1
        b: str = "x"  # a trailing comment is not a key's comment
        # Only the lines directly above count.

        c: float = 0.5

    comments = field_comments(Probe)
    assert comments == {"a": ["First line of a comment,", "and its second line."],
                        "b": [], "c": []}


def test_config_show_refuses_a_bad_override_in_one_line(capsys):
    assert cli_main(["config", "show", "forget.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key forget.lrr" in err[0]
    assert err[0].startswith("distforget config: error:")
