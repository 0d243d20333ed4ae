"""Writing benchmark figures between markers: bench/common.py's refusals, and the repository's
own results files, whose marker pairs must each be unique (a second pair of one name would take
another benchmark's figures)."""

import re
from pathlib import Path

import pytest

from bench.common import missing_section, replace_section

ROOT = Path(__file__).resolve().parents[1]


def test_a_section_is_written_between_its_own_markers_only(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("a\n<!-- x:begin -->\nold\n<!-- x:end -->\nb\n<!-- y:begin -->\nkept\n"
                    "<!-- y:end -->\n")
    replace_section(path, "x", "new")
    assert path.read_text() == ("a\n<!-- x:begin -->\nnew\n<!-- x:end -->\nb\n"
                                "<!-- y:begin -->\nkept\n<!-- y:end -->\n")


@pytest.mark.parametrize("text, message", [
    ("no markers\n", "has no <!-- x:begin -->"),
    ("<!-- x:begin -->\n<!-- x:end -->\n<!-- x:begin -->\n<!-- x:end -->\n",
     "holds <!-- x:begin --> 2 times"),
    ("<!-- x:end -->\n<!-- x:begin -->\n", "has <!-- x:end --> before <!-- x:begin -->"),
])
def test_a_section_whose_markers_are_missing_repeated_or_reversed_is_refused(tmp_path, text,
                                                                            message):
    path = tmp_path / "RESULTS.md"
    path.write_text(text)
    assert message in missing_section(path, "x")
    with pytest.raises(SystemExit, match=re.escape(message)):
        replace_section(path, "x", "new")
    assert path.read_text() == text


@pytest.mark.parametrize("name", ["README.md", "bench/RESULTS.md"])
def test_every_marker_pair_in_the_repositorys_results_is_unique_and_in_order(name):
    text = (ROOT / name).read_text()
    names = set(re.findall(r"<!-- ([\w.-]+):(?:begin|end) -->", text))
    assert names
    for section in sorted(names):
        assert missing_section(ROOT / name, section) is None, section
