"""`kiln bench <checkpoint>`: latency and throughput of the model's main task, printed as a table.

- language models: prefill ms (a random prompt of --prompt-len tokens) and decode tokens/s
  (greedy; generating --new-tokens minus generating 1 token, so the prefill cancels out),
- BERT: sentences/s of `encode` at batch 1 and 32 (synthetic sentences of 5-24 words),
- Whisper: real-time factor of `transcribe` on --seconds of synthetic audio (seconds of compute
  per second of audio; below 1 is faster than real time).

Every figure is the median of --repeat timed runs after one untimed run that compiles the
graphs; that first run's time is a row of its own. Peer comparisons (HF eager, torch.compile)
live in the bench/ scripts.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Callable

from kiln.cli_common import check_device, kind_of, resolve_checkpoint

BERT_BATCHES = (1, 32)
WORDS = ("the quick brown fox jumps over a lazy dog while small kilns bake static graphs into fast "
         "kernels for every model that people load today").split()


def bench_main(args) -> int:
    """`kiln bench`: errors propagate to kiln.cli.main, which prints them as one line (exit 2)."""
    check_device(args.device)
    ck = resolve_checkpoint(args.model)
    loader = ck.loader()
    model = loader(ck.path, device=args.device, dtype=args.dtype)
    rows = bench_model(model, kind_of(ck), args)
    if args.json:
        print(json.dumps({"model": str(ck.path), "model_type": kind_of(ck), "device": args.device,
                          "dtype": args.dtype, "rows": rows}, indent=2))
    else:
        print(format_table(rows, f"kiln bench {ck.path} ({kind_of(ck)} on {args.device}, {args.dtype})"))
    return 0


def bench_model(model, model_type: str, args) -> list[dict]:
    """Rows {task, metric, value} for the model's main task (by what the loaded model can do)."""
    if hasattr(model, "transcribe"):
        return _bench_speech(model, args)
    if hasattr(model, "encode") and hasattr(model, "pooling"):
        return _bench_embeddings(model, args)
    if hasattr(model, "prefill") and hasattr(model, "generate"):
        return _bench_lm(model, args)
    raise ValueError(f"kiln bench does not know the main task of a {model_type!r} model yet "
                     f"(it benchmarks language models, BERT and Whisper)")


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(seconds of the first, compiling call; median seconds of `repeat` more)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def _bench_lm(model, args) -> list[dict]:
    import numpy as np

    prompt, new, batch = args.prompt_len, args.new_tokens, args.batch_size
    if new < 2:
        raise ValueError(f"--new-tokens must be at least 2 (decode speed is measured past the first token), got {new}")
    limit = model.max_position_embeddings
    if limit is not None and prompt + new > limit:
        raise ValueError(f"--prompt-len {prompt} + --new-tokens {new} exceed the model's max_position_embeddings "
                         f"({limit})")
    ids = np.random.default_rng(0).integers(0, model.graphs.vocab_size, (batch, prompt))

    def generate(n):
        return lambda: model.generate(ids, max_new_tokens=n, eos_token_id=[])

    first_1, one = _timed(generate(1), args.repeat)
    first_n, full = _timed(generate(new), args.repeat)
    decode_s = full - one
    if decode_s <= 0:   # timing noise larger than the decode itself (a tiny model): say so, never print a made-up rate
        raise ValueError(f"decode time is below timing noise ({new} tokens took {full * 1e3:.2f} ms, one token "
                         f"{one * 1e3:.2f} ms); raise --new-tokens or --repeat")
    return [
        _row(f"prefill {prompt} tokens, batch {batch}", "ms", one * 1e3),
        _row(f"decode, batch {batch} ({new - 1} steps)", "tokens/s", batch * (new - 1) / decode_s),
        _row("decode step", "ms", decode_s / (new - 1) * 1e3),
        _row("first runs (compile + run)", "s", first_1 + first_n),
    ]


def _bench_embeddings(model, args) -> list[dict]:
    import numpy as np

    if model.tokenizer is None:
        raise ValueError("kiln bench embeds sentences, but this checkpoint has no tokenizer.json")
    rng = np.random.default_rng(0)
    rows, first = [], 0.0
    for batch in BERT_BATCHES:
        n = max(4 * batch, 32)
        sentences = [" ".join(rng.choice(WORDS, int(rng.integers(5, 25)))) for _ in range(n)]
        compiling, s = _timed(lambda: model.encode(sentences, batch_size=batch), args.repeat)
        first += compiling
        rows.append(_row(f"encode, batch {batch} ({n} sentences)", "sentences/s", n / s))
    rows.append(_row("first runs (compile + run)", "s", first))
    return rows


def _bench_speech(model, args) -> list[dict]:
    import numpy as np

    if model.tokenizer is None:
        raise ValueError("kiln bench transcribes audio, but this checkpoint has no tokenizer.json")
    rate, seconds = 16000, args.seconds
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)   # a gliding tone in a little noise: speech-like energy, no words
    audio = (0.3 * np.sin(2 * np.pi * (200 + 100 * np.sin(t)) * t) + 0.01 * rng.standard_normal(t.shape))
    audio = audio.astype(np.float32)
    first, s = _timed(lambda: model.transcribe(audio, sampling_rate=rate), args.repeat)
    return [
        _row(f"transcribe {seconds:g} s of audio", "s", s),
        _row("real-time factor (compute / audio time)", "x", s / seconds),
        _row("first run (compile + run)", "s", first),
    ]


def _row(task: str, metric: str, value: float) -> dict:
    return {"task": task, "metric": metric, "value": float(value)}


def format_table(rows: list[dict], title: str) -> str:
    values = [_fmt(r["value"]) for r in rows]
    w = max(len("task"), *(len(r["task"]) for r in rows))
    m = max(len("metric"), *(len(r["metric"]) for r in rows))
    v = max(10, *(len(x) for x in values))       # a fast tiny model's tokens/s can outgrow 10 digits
    lines = [title, f"| {'task':<{w}} | {'metric':<{m}} | {'value':>{v}} |", f"|{'-' * (w + 2)}|{'-' * (m + 2)}|{'-' * (v + 2)}|"]
    lines += [f"| {r['task']:<{w}} | {r['metric']:<{m}} | {x:>{v}} |" for r, x in zip(rows, values)]
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
