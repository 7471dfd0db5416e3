"""`kiln embed`: sentence embeddings and cosine-similarity ranking with a BERT checkpoint.

Sentences are encoded longest first (as sentence-transformers does) so each batch pads to
similar lengths, and the embeddings are returned in the input order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kiln.cli_common import check_device, kind_of, resolve_checkpoint


def embed_main(args) -> int:
    """`kiln embed`: errors propagate to kiln.cli.main, which prints them as one line (exit 2)."""
    sentences = list(args.sentences)
    if args.file:
        lines = Path(args.file).read_text(encoding="utf-8").splitlines()
        sentences += [line for line in lines if line.strip()]
    if not sentences:
        raise ValueError("give sentences as arguments or --file")
    if args.similarity and len(sentences) < 2:
        raise ValueError("--similarity: give a query and at least one sentence to rank")
    out = getattr(args, "out", None)
    if out is not None and Path(out).suffix != ".npy":
        raise ValueError(f"--out {out!r}: expected a path ending in .npy")
    check_device(args.device)
    from kiln.models.registry import loader_for

    if args.model:
        ck = resolve_checkpoint(args.model)
        if kind_of(ck) != "bert":
            raise ValueError(f"{ck.path} is a {kind_of(ck)!r} checkpoint; kiln embed needs a BERT "
                             f"(sentence-transformers) checkpoint, model_type 'bert'")
        path, name = ck.path, args.model
    else:
        from kiln.models.bert import demo_model_dir
        path, name = demo_model_dir(), "all-MiniLM-L6-v2"

    model = loader_for("bert")(path, device=args.device, dtype=getattr(args, "dtype", "float32"))
    if model.tokenizer is None:
        raise ValueError(f"{path}: no tokenizer.json, so the sentences cannot be tokenized")
    emb = model.encode(sentences, batch_size=args.batch_size,
                       progress=len(sentences) > args.batch_size and sys.stderr.isatty())

    if out is not None:
        import numpy as np

        np.save(out, emb)
    if args.similarity:
        ranking = rank(emb)
        if args.json:
            print(json.dumps({"model": name, "query": sentences[0],
                              "ranking": [{"text": sentences[i + 1], "score": round(s, 6)} for i, s in ranking]},
                             indent=2))
            return 0
        print(f"query: {sentences[0]}")
        for n, (i, s) in enumerate(ranking, 1):
            print(f"{n:>3}. {s:.4f}  {sentences[i + 1]}")
        return 0
    if args.json:
        print(json.dumps({"model": name, "shape": list(emb.shape),
                          "embeddings": [{"text": s, "embedding": [float(v) for v in e]}
                                         for s, e in zip(sentences, emb)]}))
        return 0
    where = f", saved to {out}" if out is not None else ""
    print(f"embeddings: shape {emb.shape}, model {name}{where}")
    if out is None:
        for s, e in zip(sentences, emb):
            head = ", ".join(f"{v:+.4f}" for v in e[:6])
            print(f"[{head}, ...]  {s}")
    return 0


def rank(emb) -> list[tuple[int, float]]:
    """(index into emb[1:], cosine similarity to emb[0]) pairs, most similar first."""
    import numpy as np

    query, docs = emb[0], emb[1:]
    sims = docs @ query / (np.linalg.norm(docs, axis=1) * np.linalg.norm(query) + 1e-12)
    return [(int(i), float(sims[i])) for i in np.argsort(-sims, kind="stable")]
