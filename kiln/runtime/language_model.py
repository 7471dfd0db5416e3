"""`CausalLM`: a loaded decoder-only language model that runs compiled prefill and decode graphs.

A model family (kiln.models.*) supplies `DecoderGraphs`: builders for a prefill graph
per (batch, prompt length[, cache length]) and a decode graph per (batch, cache length),
with the I/O below, plus its parameters. This class compiles each shape once, keeps the
KV cache as state of the compiled graphs (on the device for device="cuda"; only token
ids, positions and the slot go up, and only logits or the chosen token ids come down),
and offers the HF-style surface: `model(input_ids, attention_mask)` -> logits,
`generate(...)`, and the text-in/text-out `generate_text(...)`.

Graph contract (names in kiln.runtime.kv_cache):
  prefill  inputs  input_ids, attention_mask, position_ids            [B, S] int64
           outputs logits [B, S, V] (or [B, 1, V] for the last position) float32
           states  (with a cache length L) cache.mask [B, L] int64 := attention_mask padded
                   with zeros; cache.{i}.key / cache.{i}.value [B, Hkv, L, D] with the
                   prompt's keys/values written at slots [0, S)
  decode   inputs  input_ids, position_ids [B, 1] int64, cache_position [1] int64 (the slot)
           outputs logits [B, 1, V] float32
           states  cache.mask (1 written at the slot), cache.{i}.key / .value (the new
                   token's key/value written at the slot); attention over slots <= slot
                   that the mask marks (and the layer's sliding window)
Shapes are bucketed (kiln.runtime.buckets): a prompt is left-padded to a length bucket with mask
0 (what HF computes for a left-padded batch: positions come from the mask, padded keys are
masked out) and the batch is padded with copies of its last row, so a stream of prompts
compiles one graph per bucket. Compiled graphs live in a bounded LRU cache; `model.buckets =
None` runs exact shapes.

For greedy decoding the runtime appends `next_token` = argmax of the last logits [B]
int64 and drops the logits output, so a step returns only the ids; the greedy decode graph
also feeds itself: its token, position and slot inputs become states that each step advances
(with a per-row "unfinished" state when there are EOS ids), so consecutive steps need nothing
from the host and run back to back while the host reads the previous step's ids.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol, Sequence

import numpy as np

from kiln.compile import cache as plan_cache
from kiln.compile.gc_pause import gc_paused
from kiln.compile.pipeline import recipe_stored
from kiln.compile.plan_ahead import PlanAhead
from kiln.errors import InputError
from kiln.ir import Graph

from .buckets import GraphCache, ShapeBuckets, StatePool
from .compiler import reference_evaluate
from .generation import GenerationConfig, TextStreamer, generate
from .kv_cache import StaticKVCache


class DecoderGraphs(Protocol):
    """What a decoder-only family provides to `CausalLM`."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    def prefill_graph(self, batch: int, seq: int, last_only: bool = False, cache_len: int | None = None,
                      features: bool = False) -> Graph: ...

    def decode_graph(self, batch: int, max_len: int) -> Graph: ...


class CausalLM:
    """A decoder-only LM: call it for logits, `generate` for ids, `generate_text` for text."""

    CACHE_BLOCK = 64  # cache lengths round up to this, so one decode graph serves many generations

    def __init__(self, graphs: DecoderGraphs, params: dict[str, np.ndarray], *, tokenizer=None,
                 generation_config: GenerationConfig | None = None, device: str = "cpu",
                 dtype: str = "float32", optimize: bool = True, name: str = "model",
                 buckets: ShapeBuckets | None = ShapeBuckets(), max_graphs: int = 24):
        self.graphs, self.params, self.tokenizer = graphs, params, tokenizer
        self.generation_config = generation_config or GenerationConfig()
        self.device, self.dtype, self.optimize, self.name = device, dtype, optimize, name
        self.buckets = buckets     # None: every shape exactly as given (one graph per shape)
        # compiled graphs, LRU-bounded; graphs of one (batch, cache_len) share one pool of KV-cache buffers
        self._compiled = GraphCache(max_graphs)
        self._builder = None       # the graph builder's description, once needed (`_recipe`)
        self._weights: dict = {}   # parameter name -> (array, device buffer): one copy for all compiled graphs
        self.compile_seconds = 0.0

    @property
    def config(self):
        return getattr(self.graphs, "config", None)

    @property
    def max_position_embeddings(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)

    # ---- compiled graphs ------------------------------------------------------
    @staticmethod
    def _select(kind: str, select):
        return ("greedy", (), None) if select == "greedy" and kind == "decode" else select   # self-feeding, no EOS

    @staticmethod
    def _key(kind: str, shape: tuple, last_only: bool, select, features: bool = False) -> tuple:
        """The compiled-graph cache key (`select` as `_select` left it)."""
        return (kind, *shape, last_only, select) + (("features",) if features else ())

    def _recipe(self, key: tuple) -> tuple | None:
        """What builds the graph of compiled-graph key `key` (`_key`): the compile cache finds its plan
        by this, without building it (kiln/compile/cache.py). None: the builder has no stable description."""
        if self._builder is None:
            try:
                self._builder = plan_cache.digest(self.graphs)
            except plan_cache.Uncacheable:
                self._builder = False
        return ("CausalLM", self._builder, key) if self._builder is not False else None

    def _graph(self, kind: str, shape: tuple, last_only: bool, select, features: bool):
        """The graph `compiled` compiles, selection and self-feeding applied (`select` as `_select` left it)."""
        extra = {"features": True} if features else {}
        if kind == "forward":
            g = self.graphs.prefill_graph(*shape, last_only=last_only, **extra)
        elif kind == "prefill":
            batch, seq, cache_len = shape
            g = self.graphs.prefill_graph(batch, seq, last_only=last_only, cache_len=cache_len, **extra)
        elif kind == "decode":
            g = self.graphs.decode_graph(*shape)
        else:
            raise ValueError(f"unknown graph kind {kind!r}; expected 'forward', 'prefill' or 'decode'")
        if select != "logits":
            _select_greedy(g)
            if kind == "decode":
                _feed_itself(g, *select[1:])
        return g

    def compiled(self, kind: str, *shape: int, last_only: bool = False, select: str = "logits",
                 features: bool = False, graph=None, planned_ahead: bool = False):
        """The compiled graph of `kind` and shape, built on first use.

        "forward" (batch, seq): logits, no cache. "prefill" (batch, seq, cache_len) and "decode"
        (batch, cache_len) read and write the KV-cache states; all graphs of one (batch,
        cache_len) share one set of cache buffers. select="greedy" returns `next_token` ids.
        `features`: a forward or prefill that also takes `inputs_embeds` / `embeds_mask`
        (kiln.nn.features: an encoder's features at their placeholder tokens). `graph`: that
        graph, already built (`_graph`), and `planned_ahead` whether a planning process just stored
        its plan, as `_warmup` passes them.
        """
        select = self._select(kind, select)
        key = self._key(kind, shape, last_only, select, features)
        cg = self._compiled.get(key)
        if cg is None:
            from .compiler import compile as compile_graph

            t0 = time.perf_counter()
            g = graph if graph is not None else (lambda: self._graph(kind, shape, last_only, select, features))
            cg = compile_graph(g, device=self.device, optimize=self.optimize, planned_ahead=planned_ahead,
                               recipe=self._recipe(key))
            cg.share_params(self._weights, {k: v for k, v in self.params.items() if k in cg.param_types})
            pool = self._state_pool(shape[0], shape[-1]) if kind != "forward" else None
            if pool is not None:
                cg.share_states(pool)
            self._compiled.put(key, cg, pool)
            self.compile_seconds += time.perf_counter() - t0
        return cg

    def _state_pool(self, batch: int, cache_len: int) -> StatePool:
        """The KV-cache buffers every graph of (batch, cache_len) reads and writes."""
        return self._compiled.pool((batch, cache_len))

    @property
    def compiles(self) -> int:
        """How many graphs this model has compiled (evicted ones included)."""
        return self._compiled.compiles

    def padded_shape(self, batch: int, seq: int) -> tuple[int, int]:
        """The (batch, seq) bucket an input of this shape runs in."""
        if self.buckets is None:
            return batch, seq
        return self.buckets.batch(batch), self.buckets.length(seq, limit=self.max_position_embeddings)

    def warmup(self, batch: int, prompt_len: int, max_new_tokens: int, progress: bool = False,
               select: str = "logits") -> None:
        """Compile the graphs a generation of this shape needs (e.g. before timing it)."""
        self._warmup([(batch, prompt_len)], max_new_tokens, progress, select)

    def warmup_buckets(self, max_prompt_len: int, max_new_tokens: int, batch: int = 1, progress: bool = False,
                       select: str = "greedy") -> None:
        """Compile, ahead of use, the graphs of every prompt-length bucket up to `max_prompt_len`
        (generations of up to `max_new_tokens`): later prompts of these sizes compile nothing."""
        if self.buckets is None:
            raise InputError("warmup_buckets needs shape buckets; this model runs exact shapes (buckets=None)")
        top = self.padded_shape(batch, max_prompt_len)[1]
        lengths = sorted({self.padded_shape(batch, n)[1] for n in (*self.buckets.lengths, top) if n <= top})
        if 2 * len(lengths) > self._compiled.limit:
            raise InputError(f"warming {len(lengths)} prompt buckets needs {2 * len(lengths)} graphs, more than the "
                             f"compile cache holds ({self._compiled.limit}); raise max_graphs or max_prompt_len lower")
        self._warmup([(batch, n) for n in lengths], max_new_tokens, progress, select)

    def _warmup(self, shapes, max_new_tokens: int, progress: bool, select: str) -> None:
        todo = []
        for batch, prompt_len in shapes:
            b, s = self.padded_shape(batch, prompt_len)
            cache_len = self.cache_length(s + max_new_tokens)
            todo += [("prefill", (b, s, cache_len)), ("decode", (b, cache_len))]
        decode_select = select
        if select == "greedy":   # the self-feeding decode graph `generate` runs: the checkpoint's EOS ids and pad
            eos = tuple(self.generation_config.eos_token_ids)
            pad = self.generation_config.pad_token_id
            pad = eos[0] if pad is None and eos else pad
            decode_select = ("greedy", eos, pad if eos else None)
        specs = [(kind, shape, kind == "prefill", self._select(kind, decode_select if kind == "decode" else select))
                 for kind, shape in todo]
        # the graphs still to plan, built now: each after the first plans in a process of its own
        with gc_paused():   # building graphs allocates objects by the million (kiln/compile/gc_pause.py)
            graphs = {spec: self._graph(*spec, False) for spec in dict.fromkeys(specs)
                      if self._compiled.get(self._key(*spec)) is None and not recipe_stored(
                          self._recipe(self._key(*spec)), device=self.device, optimize=self.optimize,
                          evaluate=reference_evaluate)}
        ahead = PlanAhead(list(graphs.values())[1:], device=self.device, optimize=self.optimize,
                          evaluate=reference_evaluate) if len(graphs) > 1 else None
        if progress:
            from tqdm import tqdm

            specs = tqdm(specs, desc="compiling", unit="graph", leave=False)
        own = None   # seconds this process took for its own first graph
        try:
            for (kind, shape, last_only, sel) in specs:
                if progress:
                    specs.set_postfix_str(f"{kind} batch {shape[0]} cache {shape[-1]}")
                g = graphs.get((kind, shape, last_only, sel))
                planned = ahead is not None and g is not None and g in ahead and ahead.wait(g, own or 0.0)
                t0 = time.perf_counter()
                self.compiled(kind, *shape, last_only=last_only, select=sel, graph=g, planned_ahead=planned)
                if own is None:
                    own = time.perf_counter() - t0
        finally:
            if ahead is not None:
                ahead.close()

    def cache_length(self, needed: int) -> int:
        return -(-needed // self.CACHE_BLOCK) * self.CACHE_BLOCK

    # ---- forward -------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, position_ids=None, features=None) -> np.ndarray:
        """Logits [batch, seq, vocab] (float32), as HF's forward: positions default to 0..S-1.

        `features` = (inputs_embeds [B, S, hidden], embeds_mask [B, S] bool): rows that replace the
        token embeddings where the mask is set (a multimodal model's encoder output)."""
        ids = self._ids("input_ids", input_ids)
        mask = np.ones_like(ids) if attention_mask is None else self._ids("attention_mask", attention_mask)
        self._same_shape("attention_mask", mask, ids)
        if position_ids is None:
            pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        else:
            pos = np.broadcast_to(self._ids("position_ids", position_ids), ids.shape).copy()
        b, s = ids.shape
        rows, width = self.padded_shape(b, s)
        feeds = _padded(dict(input_ids=ids, attention_mask=mask, position_ids=pos, **self._features(features, ids)),
                        rows, width)
        logits = self.compiled("forward", rows, width, last_only=False, features=features is not None).run(**feeds)
        return logits["logits"] if (rows, width) == (b, s) else np.ascontiguousarray(logits["logits"][:b, width - s:])

    # ---- the interface `generate` drives --------------------------------------------
    device_greedy = True  # prefill(greedy=True) and greedy_steps pick argmax ids where the model runs

    def new_cache(self, batch: int, max_length: int) -> StaticKVCache:
        """The cache of one generation of `batch` rows up to `max_length` tokens (rows padded to a bucket;
        its length is settled by the prefill, once the prompt's padding is known)."""
        return GenerationCache(batch, self.padded_shape(batch, 1)[0], max_length, self.cache_length(max_length))

    def prefill(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: StaticKVCache,
                greedy: bool = False, features=None) -> np.ndarray:
        """Run the prompt into the cache; return the last position's logits [B, V] (greedy: ids [B])."""
        ids = self._ids("input_ids", ids)
        b, s = ids.shape
        feeds = dict(input_ids=ids, attention_mask=np.asarray(mask, np.int64),
                     position_ids=np.asarray(positions, np.int64), **self._features(features, ids))
        for name in ("attention_mask", "position_ids"):
            self._same_shape(name, feeds[name], ids)
        rows, width = cache.batch, s
        if isinstance(cache, GenerationCache):   # the prompt padded to its bucket, the cache sized to hold it
            if b != cache.rows:
                raise InputError(f"the prompt has {b} rows, but the cache was made for {cache.rows}")
            width = self.padded_shape(b, s)[1]
            cache.settle(self.cache_length(cache.needed + width - s), self._state_pool)
        elif b != cache.batch:
            raise InputError(f"the prompt has {b} rows, but the cache has {cache.batch}")
        cache.start(width)
        select = "greedy" if greedy else "logits"
        out = self.compiled("prefill", rows, width, cache.max_len, last_only=True, select=select,
                            features=features is not None).run(**_padded(feeds, rows, width))
        return out["next_token"][:b] if greedy else out["logits"][:b, -1]

    def greedy_steps(self, cache: StaticKVCache, tokens: np.ndarray, positions: np.ndarray,
                     unfinished: np.ndarray, eos: Sequence[int], pad: int | None, count: int | None = None):
        """Greedy decode steps from `tokens` [B] at `positions` [B]: yields each step's ids [B]
        (pad for finished rows, as `generate` appends them), at most `count` of them. Each step feeds
        itself on the device, and the next step is launched before this one's ids are read, so the GPU
        never waits for the host (when every row stops at EOS early, one step past it may have run;
        its slot is simply unused)."""
        b, rows = tokens.shape[0], cache.batch
        eos = tuple(int(e) for e in eos)
        cg = self.compiled("decode", rows, cache.max_len, select=("greedy", eos, pad if eos else None))
        cg.set_state("input_ids", _rows(np.asarray(tokens, np.int64), rows).reshape(rows, 1))
        cg.set_state("position_ids", _rows(np.asarray(positions, np.int64), rows).reshape(rows, 1))
        cg.set_state("cache_position", np.array([cache.length], np.int64))
        if eos:
            cg.set_state(UNFINISHED, _rows(np.asarray(unfinished, bool), rows))
        cache.next_slot()
        pending = cg.run_async()
        left = cache.max_len - cache.length if count is None else count - 1   # steps still to launch
        while True:
            ahead = None
            if left > 0 and cache.length < cache.max_len:
                left -= 1
                cache.next_slot()
                ahead = cg.run_async()
            yield pending.wait()["next_token"][:b]
            if ahead is None:
                return
            pending = ahead

    def decode(self, tokens: np.ndarray, positions: np.ndarray, cache: StaticKVCache) -> np.ndarray:
        """Feed one token per row at the cache's next slot; return its logits [B, V] (greedy decoding
        runs `greedy_steps` instead)."""
        b, rows = tokens.shape[0], cache.batch
        slot = cache.next_slot()
        out = self.compiled("decode", rows, cache.max_len).run(
            input_ids=_rows(np.asarray(tokens, np.int64), rows).reshape(rows, 1),
            position_ids=_rows(np.asarray(positions, np.int64), rows).reshape(rows, 1),
            cache_position=np.array([slot], np.int64))
        return out["logits"][:b, -1]

    # ---- generation -------------------------------------------------------------------
    def generate(self, input_ids, attention_mask=None, *, max_new_tokens: int | None = None,
                 max_length: int | None = None, min_new_tokens: int | None = None, do_sample: bool | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 repetition_penalty: float | None = None, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None, streamer=None, seed: int | np.random.Generator | None = None,
                 output_scores: bool = False, output_logits: bool = False, return_dict_in_generate: bool = False,
                 features=None):
        """Token ids [batch, prompt + new], as HF `generate` (defaults from the checkpoint's generation config).

        `features` (inputs_embeds, embeds_mask) go into the prompt's embeddings, as in `__call__`."""
        cfg = self.generation_config.merged(
            max_new_tokens=max_new_tokens, max_length=max_length, min_new_tokens=min_new_tokens,
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        if max_new_tokens is not None:
            cfg.max_length = None
        elif max_length is not None:
            cfg.max_new_tokens = None
        return generate(self, input_ids, attention_mask, config=cfg, streamer=streamer, seed=seed,
                        output_scores=output_scores, output_logits=output_logits,
                        return_dict_in_generate=return_dict_in_generate, features=features)

    def generate_text(self, prompt: str | Sequence[str], *, chat: bool = False, system: str | None = None,
                      stream: Callable[[str], None] | None = None, skip_special_tokens: bool = True,
                      **generate_kwargs) -> str | list[str]:
        """Text in, continuation out (only the new text). `chat` wraps each prompt in the chat template.

        Several prompts are left-padded into one batch. `stream(piece)` receives text as it is
        generated (one prompt only).
        """
        tok = self._tokenizer()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("generate_text needs at least one prompt")
        seqs = []
        for p in prompts:
            if chat:
                msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
                seqs.append(tok.encode_chat(msgs, add_generation_prompt=True))
            else:
                seqs.append(tok.encode(p))
        ids, mask = self._left_pad(seqs)
        streamer = None
        if stream is not None:
            if len(prompts) != 1:
                raise ValueError("stream= works with a single prompt")
            streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=skip_special_tokens, on_text=stream)
        if "pad_token_id" not in generate_kwargs and self.generation_config.pad_token_id is None \
                and tok.pad_token_id is not None:
            generate_kwargs["pad_token_id"] = tok.pad_token_id
        out = self.generate(ids, mask, streamer=streamer, **generate_kwargs)
        texts = [tok.decode(row[ids.shape[1]:], skip_special_tokens=skip_special_tokens) for row in out]
        return texts[0] if isinstance(prompt, str) else texts

    # ---- helpers ------------------------------------------------------------------------
    def _tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(f"{self.name}: this checkpoint has no tokenizer.json; pass token ids to generate()")
        return self.tokenizer

    def _left_pad(self, seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(s) for s in seqs)
        if width == 0:
            raise ValueError("the prompt encodes to no tokens")
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.generation_config.pad_token_id
        if pad is None:
            eos = self.generation_config.eos_token_ids
            pad = eos[0] if eos else 0
        ids = np.full((len(seqs), width), pad, np.int64)
        mask = np.zeros((len(seqs), width), np.int64)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s):] = s
                mask[i, width - len(s):] = 1
        return ids, mask

    def _ids(self, name: str, a) -> np.ndarray:
        arr = np.asarray(a)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array [batch, seq], got shape {arr.shape} dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if arr.shape[1] == 0:
            raise InputError(f"{name} is empty (shape {arr.shape}); a forward pass needs at least one token")
        limit = self.max_position_embeddings
        if limit is not None and arr.shape[1] > limit:
            raise InputError(f"{name} has {arr.shape[1]} tokens, more than the model's max_position_embeddings "
                             f"({limit})")
        if name == "input_ids" and arr.size and (arr.min() < 0 or arr.max() >= self.graphs.vocab_size):
            raise ValueError(f"input_ids must be in [0, {self.graphs.vocab_size}), got [{arr.min()}, {arr.max()}]")
        return arr

    def _features(self, features, ids: np.ndarray) -> dict:
        """The graph inputs for `features` = (inputs_embeds, embeds_mask), shapes checked against ids."""
        if features is None:
            return {}
        embeds, where = (np.asarray(a) for a in features)
        hidden = getattr(self.config, "hidden_size", None)
        if embeds.ndim != 3 or embeds.shape[:2] != ids.shape or (hidden is not None and embeds.shape[2] != hidden):
            raise InputError(f"inputs_embeds has shape {embeds.shape}, expected [batch, seq, hidden] = "
                             f"{[*ids.shape, hidden]}")
        if where.shape != ids.shape or where.dtype != np.bool_:
            raise InputError(f"embeds_mask must be a bool array of input_ids' shape {ids.shape}, "
                             f"got {where.dtype} {where.shape}")
        return {"inputs_embeds": embeds, "embeds_mask": where}

    @staticmethod
    def _same_shape(name: str, a: np.ndarray, ids: np.ndarray) -> None:
        if a.shape != ids.shape:
            raise ValueError(f"{name} has shape {a.shape}, expected input_ids' shape {ids.shape}")


UNFINISHED = "generate.unfinished"


class GenerationCache(StaticKVCache):
    """A generation's cache in bucketed shapes: `rows` real rows of `batch`, `needed` real tokens.

    Its length is settled at the prefill (prompt padding + `needed`); from then on it holds the
    state pool of its (batch, max_len), so the buffers outlive any eviction of its graphs."""

    def __init__(self, rows: int, batch: int, needed: int, max_len: int):
        super().__init__(batch, max_len)
        self.rows, self.needed = rows, needed
        self.pool: StatePool | None = None

    def settle(self, max_len: int, pool_of: Callable[[int, int], StatePool]) -> None:
        if self.length != 0:
            raise ValueError(f"prefill writes an empty cache, but {self.length} slots are already filled")
        self.max_len = max_len
        self.pool = pool_of(self.batch, max_len)


def _rows(a: np.ndarray, rows: int) -> np.ndarray:
    """a with rows appended (copies of its last) up to `rows`: filler rows compute a real row's values
    (never a fully masked one) and are dropped from the outputs."""
    return a if a.shape[0] == rows else np.concatenate([a, np.repeat(a[-1:], rows - a.shape[0], axis=0)])


def _padded(feeds: dict[str, np.ndarray], rows: int, width: int) -> dict[str, np.ndarray]:
    """Graph inputs [B, S, ...] left-padded to `width` columns (zeros: mask 0, position 0, token 0,
    embeds_mask False, so nothing attends to them) and filled to `rows` rows."""
    out = {}
    for name, a in feeds.items():
        pad = width - a.shape[1]
        if pad:
            a = np.concatenate([np.zeros((a.shape[0], pad, *a.shape[2:]), a.dtype), a], axis=1)
        out[name] = _rows(a, rows)
    return out


def _feed_itself(g: Graph, eos: tuple[int, ...], pad: int | None) -> None:
    """Make a greedy decode graph's inputs states it advances: the token it picked (pad for rows that
    finished, with `eos`) is the next step's input, positions and the cache slot move on by one."""
    tok = g.outputs.pop("next_token")
    ids, pos, slot = (g.inputs[n] for n in ("input_ids", "position_ids", "cache_position"))
    b = tok.shape[0]
    if eos:
        unfinished = g.state(UNFINISHED, (b,), "bool")
        tok = g.where(unfinished, tok, g.scalar(pad, "int64"))
        hit = g.equal(tok, g.scalar(eos[0], "int64"))
        for e in eos[1:]:
            hit = g.logical_or(hit, g.equal(tok, g.scalar(e, "int64")))
        g.assign(unfinished, g.logical_and(unfinished, g.logical_not(hit)))
    g.output("next_token", tok)
    g.assign(ids, g.reshape(tok, shape=[b, 1]))
    g.assign(pos, pos + g.scalar(1, "int64"))
    g.assign(slot, slot + g.scalar(1, "int64"))


def _select_greedy(g: Graph) -> None:
    """Replace the `logits` output [B, S, V] by `next_token` [B] = argmax of the last position."""
    logits = g.outputs.pop("logits")
    b, s, v = logits.shape
    last = logits if s == 1 else g.slice(logits, axes=[1], starts=[s - 1], ends=[s])
    g.output("next_token", g.argmax(g.reshape(last, shape=[b, v]), axis=-1))
