"""Facts the README states that the code can check: the quick start, the environment variables
the package reads, and that the README's example output folders are ignored by git."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_the_quick_start_uses_the_console_script():
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert "distforget search" in first_block
    assert "python -m distforget.search" not in first_block


def test_the_readme_says_how_to_install_a_cpu_only_torch():
    assert "pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision" \
        in README


def environment_variables() -> set[str]:
    names = set()
    pattern = re.compile(r"(?:os\.environ(?:\.get|\.setdefault)?\(|os\.environ\[|getenv\()"
                         r"""\s*["']([A-Z0-9_]+)["']""")
    for path in (REPO / "distforget").rglob("*.py"):
        names.update(pattern.findall(path.read_text()))
    # Ray variables that a module reading the environment keeps in a dict to set (TRAIN_ENV).
    for path in (REPO / "distforget").rglob("*.py"):
        text = path.read_text()
        if "os.environ" in text:
            names.update(re.findall(r'"(RAY_[A-Z0-9_]+)"', text))
    return names


def test_every_environment_variable_the_package_reads_is_documented():
    names = environment_variables()
    assert {"DISTFORGET_CACHE", "RAY_ADDRESS"} <= names  # the scan itself works
    section = README.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    missing = sorted(n for n in names if f"`{n}`" not in section)
    assert not missing, f"not in the README's environment variables: {missing}"


@pytest.mark.parametrize("folder", sorted({
    *re.findall(r"--out (\S+)", README),
    *re.findall(r"Everything lands in\s+`([^`/]+)/", README),
    *re.findall(r"aws s3 sync \S+ (\S+?)/", README),
}))
def test_the_readmes_example_output_folders_are_ignored_by_git(folder):
    proc = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x"], cwd=REPO)
    assert proc.returncode == 0, f"{folder}/ is not in .gitignore"
