"""`kiln embed`: sentence embeddings and cosine-similarity ranking with a BERT checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def embed_main(args) -> int:
    from kiln.models.bert import demo_model_dir, load_bert

    sentences = list(args.sentences)
    if args.file:
        lines = Path(args.file).read_text(encoding="utf-8").splitlines()
        sentences += [line for line in lines if line.strip()]
    if not sentences:
        print("kiln embed: give sentences as arguments or --file", file=sys.stderr)
        return 2
    if args.similarity and len(sentences) < 2:
        print("kiln embed --similarity: give a query and at least one sentence to rank", file=sys.stderr)
        return 2
    path = Path(args.model) if args.model else demo_model_dir()
    model = load_bert(path, device=args.device)
    emb = model.encode(sentences, batch_size=args.batch_size, progress=len(sentences) > args.batch_size)
    if args.similarity:
        query, docs = emb[0], emb[1:]
        sims = docs @ query / (np.linalg.norm(docs, axis=1) * np.linalg.norm(query) + 1e-12)
        print(f"query: {sentences[0]}")
        for rank, i in enumerate(np.argsort(-sims), 1):
            print(f"{rank:>3}. {sims[i]:.4f}  {sentences[i + 1]}")
        return 0
    print(f"embeddings: shape {emb.shape}, model {path.name if args.model else 'all-MiniLM-L6-v2'}")
    for s, e in zip(sentences, emb):
        head = ", ".join(f"{v:+.4f}" for v in e[:6])
        print(f"[{head}, ...]  {s}")
    return 0
