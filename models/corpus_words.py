"""Writes models/words.txt: every distinct word of the training split, one per line.

The engine's tests use it to check that the bundled model writes real words
(of 200 tokens sampled at temperature 0.8, at least 80% of the words must
occur in the training corpus). A word is a run of ASCII letters, optionally
with one inner apostrophe, lower-cased: the same rule the test applies.

    python3 models/corpus_words.py   # after prepare_corpus.py
"""

import json
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def main():
    words = set()
    with open(HERE / "data" / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc["split"] != "train":
                continue
            for field in ("text", "user", "assistant"):
                words.update(WORD.findall(doc.get(field, "").lower()))
    out = HERE / "words.txt"
    out.write_text("".join(w + "\n" for w in sorted(words)), encoding="utf-8")
    print(f"{len(words)} words -> {out}")


if __name__ == "__main__":
    main()
