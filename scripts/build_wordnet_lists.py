"""Build the NegLabel candidate vocabularies from WordNet 3.0.

Reads ``data.noun`` and ``data.adj`` from a WordNet 3.0 database directory (Debian package
``wordnet-base`` installs it in ``/usr/share/wordnet``) and writes one lemma per line to
``src/vlmood/resources/wordnet/nouns.txt`` and ``adjectives.txt``:

- every synset of the noun.* (resp. adj.*) lexicographer files, in data-file order;
- words with ``_`` replaced by spaces; adjective position markers ``(a)``, ``(p)``, ``(ip)``
  stripped;
- de-duplicated (exact string) keeping the first occurrence.

Usage::

    apt-get install -y wordnet-base
    python scripts/build_wordnet_lists.py [--wordnet-dir /usr/share/wordnet] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "vlmood" / "resources" / "wordnet"
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def parse_data_file(path: Path, expected_pos: set[str]) -> list[str]:
    """Lemmas of every synset line of a WordNet ``data.*`` file, de-duplicated in order."""
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  "):  # licence header
                continue
            parts = line.split(" ")
            if len(parts) < 6:
                raise ValueError(f"{path}:{lineno}: malformed synset line")
            ss_type = parts[2]
            if ss_type not in expected_pos:
                raise ValueError(f"{path}:{lineno}: unexpected synset type {ss_type!r}")
            w_cnt = int(parts[3], 16)
            for i in range(w_cnt):
                word = parts[4 + 2 * i]
                word = _ADJ_MARKER.sub("", word).replace("_", " ").strip()
                if word:
                    seen.setdefault(word, None)
    return list(seen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    for name in ("data.noun", "data.adj"):
        if not (args.wordnet_dir / name).is_file():
            print(
                f"missing {args.wordnet_dir / name}; install WordNet 3.0 with "
                "`apt-get install -y wordnet-base` or pass --wordnet-dir",
                file=sys.stderr,
            )
            return 2
    nouns = parse_data_file(args.wordnet_dir / "data.noun", {"n"})
    adjs = parse_data_file(args.wordnet_dir / "data.adj", {"a", "s"})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for fname, words in (("nouns.txt", nouns), ("adjectives.txt", adjs)):
        path = args.out_dir / fname
        tmp = path.with_suffix(".txt.tmp")
        tmp.write_text("".join(w + "\n" for w in words), encoding="utf-8")
        tmp.replace(path)
        print(f"wrote {len(words)} lemmas to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
