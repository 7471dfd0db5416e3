"""The e-graph language (egglog sorts, constructors, analyses) and the named rewrite rules.

Why text: egglog's own rule language is the clearest way to read a rewrite, and
sending a program through `egglog.bindings` costs a fraction of building the same
rules through the typed Python DSL, which matters for a 2-second compile budget.

Every rule has a name (the key in the run report and in `kiln inspect`) and a group:
"algebra" rules simplify, "fusion" rules discover fused ops. Tables the rules need
but egglog cannot compute (composing permutations, which casts lose nothing) are
generated per graph by `table_facts`.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA = r"""
(sort T)
(sort Args)
(constructor V (i64) T :unextractable)
(constructor Src (i64) T)
(constructor Const (f64 i64) T)
(constructor NoneT () T)
(constructor ANil () Args)
(constructor ACons (T Args) Args)
(constructor Op (i64 Args) T)
(constructor Out (i64 T) T)
(constructor Add (T T) T)
(constructor Sub (T T) T)
(constructor Mul (T T) T)
(constructor Div (T T) T)
(constructor Pow (T T) T)
(constructor Exp (T) T)
(constructor Sqrt (T) T)
(constructor Rsqrt (T) T)
(constructor Tanh (T) T)
(constructor Erf (T) T)
(constructor Sigmoid (T) T)
(constructor Neg (T) T)
(constructor Relu (T) T)
(constructor Silu (T) T)
(constructor Gelu (String T) T)
(constructor Swiglu (T T) T)
(constructor Geglu (String T T) T)
(constructor RedLast (String T) T)
(constructor Softmax (T) T)
(constructor RmsNorm (f64 bool T T) T)
(constructor LayerNorm (f64 T T T) T)
(constructor MatMul (bool bool T T) T)
(constructor Lin (String String f64 bool T T T T T T) T)
(constructor Attn (f64 bool T T T T) T)
(constructor Transpose (String T) T)
(constructor Reshape (String T) T)
(constructor BroadcastTo (String T) T)
(constructor Cast (String T) T)
(constructor RepeatKV (i64 T) T)
(constructor SliceLast (i64 i64 T) T)
(constructor Cat0 (T T) T)
(constructor ErfGeluCore (T) T :unextractable)
(constructor TanhGeluCore (T) T :unextractable)
(constructor Cube (T) T :unextractable)
(constructor MeanSq (T) T :unextractable)
(constructor MeanSqEps (f64 T) T :unextractable)
(constructor Centered (T) T :unextractable)
(constructor VarEps (f64 T) T :unextractable)
(function Shp (T) String :merge old)
(function Rank (T) i64 :merge old)
(function LastDim (T) i64 :merge old)
(function DT (T) String :merge old)
(function B4 (T) i64 :merge old)
(function BH4 (T) String :merge old)
(function MaxSrc (T) i64 :merge old)
(function Rows (T) i64 :merge old)
(function NCat (T) i64 :merge old)
(function PermCompose (String String) String :merge old)
(relation IdPerm (String))
(relation SwapLast2 (String))
(relation Widens (String String))
(ruleset opt)
"""

# The most weights one sibling concatenation may join (Q, K, V and a spare).
MAX_SIBLINGS = 4

# Float constants match within this relative tolerance (constants arrive rounded to float32).
_TOL = 1e-6


def approx(var: str, value: float) -> str:
    """egglog facts: f64 variable `var` is within _TOL (relative) of value."""
    d = abs(value) * _TOL + 1e-12
    return f"(> {var} {value - d!r}) (< {var} {value + d!r})"


SQRT2 = 2.0 ** 0.5
INV_SQRT2 = 2.0 ** -0.5
SQRT_2_OVER_PI = (2.0 / 3.141592653589793) ** 0.5


@dataclass(frozen=True)
class Rule:
    name: str
    group: str  # "algebra" or "fusion"
    body: str   # egglog `rewrite` or `rule` without the ruleset/name keywords
    doc: str = ""

    def text(self) -> str:
        return f"{self.body[:-1]} :ruleset opt :name \"{self.name}\")"


def _rw(name, group, lhs, rhs, when="", doc=""):
    cond = f" :when ({when})" if when else ""
    return Rule(name, group, f"(rewrite {lhs} {rhs}{cond})", doc)


# a value's dtype is a float type (integer matmuls stay matmuls: linear is float-only)
_FLOAT_GUARD = " ".join(f'(!= (DT {{v}}) "{d}")' for d in ("int32", "int64", "uint8", "bool"))


def _rule(name, group, query, actions, doc=""):
    return Rule(name, group, f"(rule ({query}) ({actions}))", doc)


def _same_shape(a: str, b: str) -> str:
    return f"(= (Shp {a}) (Shp {b}))"


def _lin(act="act", norm="nrm", eps="eps", unit="unit", x="x", w="w", b="b", r="r", nw="nw", nb="nb"):
    return f"(Lin {act} {norm} {eps} {unit} {x} {w} {b} {r} {nw} {nb})"


NONE = "(NoneT)"
# q, k, v of an attention pattern are [B, H, S, D] with one batch and head count
_QKV_OK = "(= (Rank q) 4) (= bq (B4 q)) (= bq (B4 k)) (= (BH4 q) (BH4 k)) (= (BH4 k) (BH4 v))"
Q_NONE = '"none"'
Q_SILU, Q_GELU, Q_GELU_TANH, Q_RELU = '"silu"', '"gelu"', '"gelu_tanh"', '"relu"'
Q_SWIGLU, Q_GEGLU, Q_GEGLU_TANH = '"swiglu"', '"geglu"', '"geglu_tanh"'
Q_RMS_NORM, Q_LAYER_NORM = '"rms_norm"', '"layer_norm"'

ALGEBRA = [
    _rw("mul_comm", "algebra", "(Mul a b)", "(Mul b a)", doc="a*b = b*a, so one pattern covers both orders"),
    _rw("add_comm", "algebra", "(Add a b)", "(Add b a)"),
    _rule("mul_one", "algebra", f"(= m (Mul x (Const c k))) (= c 1.0) {_same_shape('m', 'x')}",
          "(union m x)", doc="x*1 = x when the 1 does not broadcast x larger"),
    _rule("add_zero", "algebra", f"(= m (Add x (Const c k))) (= c 0.0) {_same_shape('m', 'x')}", "(union m x)"),
    _rule("sub_zero", "algebra", f"(= m (Sub x (Const c k))) (= c 0.0) {_same_shape('m', 'x')}", "(union m x)"),
    _rule("div_one", "algebra", f"(= m (Div x (Const c k))) (= c 1.0) {_same_shape('m', 'x')}",
          "(union m x)"),
    _rw("double_transpose", "algebra", "(Transpose p2 (Transpose p1 x))", "(Transpose p x)",
        when="(= p (PermCompose p1 p2))"),
    _rule("identity_transpose", "algebra", "(= t (Transpose p x)) (IdPerm p)", "(union t x)"),
    _rw("reshape_chain", "algebra", "(Reshape s2 (Reshape s1 x))", "(Reshape s2 x)"),
    _rule("identity_reshape", "algebra", "(= t (Reshape s x)) (= (Shp x) s)", "(union t x)"),
    _rule("identity_broadcast", "algebra", "(= t (BroadcastTo s x)) (= (Shp x) s)", "(union t x)"),
    _rule("broadcast_fold_add", "algebra", f"(= m (Add x (BroadcastTo s y))) {_same_shape('m', 'x')}",
          "(union m (Add x y))", doc="an explicit broadcast before a broadcasting op is implicit"),
    _rule("broadcast_fold_mul", "algebra", f"(= m (Mul x (BroadcastTo s y))) {_same_shape('m', 'x')}",
          "(union m (Mul x y))"),
    _rule("broadcast_fold_sub", "algebra", f"(= m (Sub x (BroadcastTo s y))) {_same_shape('m', 'x')}",
          "(union m (Sub x y))"),
    _rule("broadcast_fold_div", "algebra", f"(= m (Div x (BroadcastTo s y))) {_same_shape('m', 'x')}",
          "(union m (Div x y))"),
    _rw("transpose_into_matmul_b", "algebra", "(MatMul ta false a (Transpose p b))", "(MatMul ta true a b)",
        when="(SwapLast2 p)", doc="a @ b^T is a matmul flag, not a copy"),
    _rw("transpose_into_matmul_b_undo", "algebra", "(MatMul ta true a (Transpose p b))",
        "(MatMul ta false a b)", when="(SwapLast2 p)"),
    _rw("transpose_into_matmul_a", "algebra", "(MatMul false tb (Transpose p a) b)", "(MatMul true tb a b)",
        when="(SwapLast2 p)"),
    _rw("transpose_into_matmul_a_undo", "algebra", "(MatMul true tb (Transpose p a) b)",
        "(MatMul false tb a b)", when="(SwapLast2 p)"),
    _rule("cast_chain", "algebra", "(= c (Cast d2 (Cast d1 x))) (= dx (DT x)) (Widens dx d1)",
          "(union c (Cast d2 x))", doc="a widening cast in the middle loses nothing"),
    _rule("identity_cast", "algebra", "(= c (Cast d x)) (= (DT x) d)", "(union c x)"),
    _rw("slice_of_slice", "algebra", "(SliceLast a b (SliceLast c d y))", "(SliceLast (+ c a) (+ c b) y)"),
]

FUSION = [
    _rw("silu", "fusion", "(Mul x (Sigmoid x))", "(Silu x)", doc="x*sigmoid(x) -> silu"),
    _rule("silu_div", "fusion", "(= m (Div x (Add (Const c k) (Exp (Neg x))))) (= c 1.0)",
          "(union m (Silu x))", doc="x/(1+exp(-x)) -> silu"),
    _rw("swiglu", "fusion", "(Mul (Silu g) u)", "(Swiglu g u)", doc="silu(g)*u -> swiglu"),
    _rw("geglu", "fusion", "(Mul (Gelu a g) u)", "(Geglu a g u)", doc="gelu(g)*u -> geglu"),
    # gelu, erf form: 0.5 * x * (1 + erf(x / sqrt 2)) in its usual associations
    _rule("gelu_erf_core", "fusion",
          f"(= t (Add (Const one k) (Erf (Mul x (Const c k2))))) (= one 1.0) {approx('c', INV_SQRT2)}",
          "(union t (ErfGeluCore x))"),
    _rule("gelu_erf_core_div", "fusion",
          f"(= t (Add (Const one k) (Erf (Div x (Const c k2))))) (= one 1.0) {approx('c', SQRT2)}",
          "(union t (ErfGeluCore x))"),
    _rule("gelu_erf", "fusion", "(= m (Mul (Mul (Const h k) x) (ErfGeluCore x))) (= h 0.5)",
          "(union m (Gelu \"none\" x))", doc="0.5*x*(1+erf(x/sqrt2)) -> gelu"),
    _rule("gelu_erf_assoc", "fusion", "(= m (Mul (Mul x (ErfGeluCore x)) (Const h k))) (= h 0.5)",
          "(union m (Gelu \"none\" x))"),
    _rule("gelu_erf_assoc2", "fusion", "(= m (Mul x (Mul (Const h k) (ErfGeluCore x)))) (= h 0.5)",
          "(union m (Gelu \"none\" x))"),
    # gelu, tanh form: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    _rule("cube_pow", "fusion", "(= p (Pow x (Const c k))) (= c 3.0)", "(union p (Cube x))"),
    _rw("cube_mul", "fusion", "(Mul x (Mul x x))", "(Cube x)"),
    _rule("gelu_tanh_core", "fusion",
          f"(= t (Add (Const one k) (Tanh (Mul (Const s k2) (Add x (Mul (Const a k3) (Cube x)))))))"
          f" (= one 1.0) {approx('s', SQRT_2_OVER_PI)} {approx('a', 0.044715)}",
          "(union t (TanhGeluCore x))"),
    _rule("gelu_tanh", "fusion", "(= m (Mul (Mul (Const h k) x) (TanhGeluCore x))) (= h 0.5)",
          "(union m (Gelu \"tanh\" x))", doc="the tanh approximation formula -> gelu(approximate='tanh')"),
    _rule("gelu_tanh_assoc", "fusion", "(= m (Mul (Mul x (TanhGeluCore x)) (Const h k))) (= h 0.5)",
          "(union m (Gelu \"tanh\" x))"),
    _rule("gelu_tanh_assoc2", "fusion",
          "(= m (Mul x (Mul (Const h k) (TanhGeluCore x)))) (= h 0.5)",
          "(union m (Gelu \"tanh\" x))"),
    # softmax over the last axis
    _rw("softmax_stable", "fusion",
        "(Div (Exp (Sub x (RedLast \"max\" x))) (RedLast \"sum\" (Exp (Sub x (RedLast \"max\" x)))))",
        "(Softmax x)", doc="exp(x - max x) / sum(exp(x - max x)) -> softmax"),
    _rw("softmax_plain", "fusion", "(Div (Exp x) (RedLast \"sum\" (Exp x)))", "(Softmax x)"),
    # rms_norm: x * rsqrt(mean(x*x) + eps)
    _rw("mean_square", "fusion", "(RedLast \"mean\" (Mul x x))", "(MeanSq x)"),
    _rule("mean_square_pow", "fusion", "(= m (RedLast \"mean\" (Pow x (Const c k)))) (= c 2.0)",
          "(union m (MeanSq x))"),
    _rw("mean_square_eps", "fusion", "(Add (MeanSq x) (Const e k))", "(MeanSqEps e x)"),
    _rule("rms_norm", "fusion", f"(= m (Mul x (Rsqrt (MeanSqEps e x)))) {_same_shape('m', 'x')}",
          f"(union m (RmsNorm e false x {NONE}))", doc="x * rsqrt(mean(x^2) + eps) -> rms_norm"),
    _rule("rms_norm_div", "fusion", f"(= m (Div x (Sqrt (MeanSqEps e x)))) {_same_shape('m', 'x')}",
          f"(union m (RmsNorm e false x {NONE}))"),
    _rule("rms_norm_weight", "fusion",
          f"(= m (Mul (RmsNorm e false x {NONE}) w)) (= (Rank w) 1) (= (LastDim w) (LastDim x)) "
          f"{_same_shape('m', 'x')}",
          "(union m (RmsNorm e false x w))", doc="rms_norm(x) * w -> rms_norm(x, w)"),
    _rule("rms_norm_unit_offset", "fusion",
          f"(= m (Mul (RmsNorm e false x {NONE}) (Add (Const one k) w))) (= one 1.0) (= (Rank w) 1) "
          f"(= (LastDim w) (LastDim x)) {_same_shape('m', 'x')}",
          "(union m (RmsNorm e true x w))", doc="rms_norm(x) * (1 + w), Gemma's form"),
    # layer_norm: (x - mean x) * rsqrt(mean((x - mean x)^2) + eps)
    _rw("center", "fusion", "(Sub x (RedLast \"mean\" x))", "(Centered x)"),
    _rule("variance_eps", "fusion", "(= v (Add (RedLast \"mean\" (Mul d d)) (Const e k))) (= d (Centered x))",
          "(union v (VarEps e x))"),
    _rule("variance_eps_pow", "fusion",
          "(= v (Add (RedLast \"mean\" (Pow d (Const c k2))) (Const e k))) (= c 2.0) (= d (Centered x))",
          "(union v (VarEps e x))"),
    _rule("layer_norm", "fusion", f"(= m (Mul (Centered x) (Rsqrt (VarEps e x)))) {_same_shape('m', 'x')}",
          f"(union m (LayerNorm e x {NONE} {NONE}))", doc="(x-mu)*rsqrt(var+eps) -> layer_norm"),
    _rule("layer_norm_div", "fusion", f"(= m (Div (Centered x) (Sqrt (VarEps e x)))) {_same_shape('m', 'x')}",
          f"(union m (LayerNorm e x {NONE} {NONE}))"),
    _rule("layer_norm_weight", "fusion",
          f"(= m (Mul (LayerNorm e x {NONE} {NONE}) w)) (= (Rank w) 1) (= (LastDim w) (LastDim x)) "
          f"{_same_shape('m', 'x')}",
          f"(union m (LayerNorm e x w {NONE}))"),
    _rule("layer_norm_bias", "fusion",
          "(= m (Add (LayerNorm e x w (NoneT)) b)) (= (Rank b) 1) (= (LastDim b) (LastDim x)) "
          f"{_same_shape('m', 'x')}",
          "(union m (LayerNorm e x w b))"),
    # matmul family: linear, bias, epilogues, prologue, siblings (linear and its fusions take floats)
    _rule("linear", "fusion", "(= m (MatMul false true x w)) (= (Rank w) 2) " + _FLOAT_GUARD.format(v="x"),
          f"(union m {_lin(Q_NONE, Q_NONE, '0.0', 'false', 'x', 'w', NONE, NONE, NONE, NONE)})",
          doc="x @ W^T with a 2-d W -> linear"),
    _rule("linear_bias", "fusion",
          f"(= l {_lin(Q_NONE, b=NONE, r=NONE)}) (= m (Add l b)) (= (Rank b) 1) (= (LastDim b) (LastDim l)) "
          f"{_same_shape('m', 'l')}",
          f"(union m {_lin(Q_NONE, r=NONE)})", doc="linear + bias vector -> linear with bias"),
    _rule("linear_silu", "fusion", f"(= m (Silu {_lin(Q_NONE, r=NONE)}))",
          f"(union m {_lin(Q_SILU, r=NONE)})", doc="activation as a matmul epilogue"),
    _rule("linear_gelu", "fusion", f"(= m (Gelu \"none\" {_lin(Q_NONE, r=NONE)}))",
          f"(union m {_lin(Q_GELU, r=NONE)})"),
    _rule("linear_gelu_tanh", "fusion", f"(= m (Gelu \"tanh\" {_lin(Q_NONE, r=NONE)}))",
          f"(union m {_lin(Q_GELU_TANH, r=NONE)})"),
    _rule("linear_relu", "fusion", f"(= m (Relu {_lin(Q_NONE, r=NONE)}))",
          f"(union m {_lin(Q_RELU, r=NONE)})"),
    _rule("linear_swiglu", "fusion",
          f"(= l {_lin(Q_NONE, r=NONE)}) (= m (Swiglu (SliceLast 0 h l) (SliceLast h e l))) (= e (* 2 h)) "
          "(= e (Rows w))",
          f"(union m {_lin(Q_SWIGLU, r=NONE)})",
          doc="swiglu over the two halves of one matmul (gate/up concatenated) as its epilogue"),
    _rule("linear_geglu", "fusion",
          f"(= l {_lin(Q_NONE, r=NONE)}) (= m (Geglu \"none\" (SliceLast 0 h l) (SliceLast h e l))) "
          "(= e (* 2 h)) (= e (Rows w))",
          f"(union m {_lin(Q_GEGLU, r=NONE)})"),
    _rule("linear_geglu_tanh", "fusion",
          f"(= l {_lin(Q_NONE, r=NONE)}) (= m (Geglu \"tanh\" (SliceLast 0 h l) (SliceLast h e l))) "
          "(= e (* 2 h)) (= e (Rows w))",
          f"(union m {_lin(Q_GEGLU_TANH, r=NONE)})"),
    _rule("linear_residual", "fusion",
          f"(= l {_lin(r=NONE)}) (= m (Add l res)) {_same_shape('m', 'l')}",
          f"(union m {_lin(r='res')})", doc="residual add as a matmul epilogue"),
    _rule("rms_norm_prologue", "fusion",
          f"(= m {_lin(norm=Q_NONE, eps='0.0', unit='false', x='(RmsNorm e u x g)', nw=NONE, nb=NONE)})",
          f"(union m {_lin(norm=Q_RMS_NORM, eps='e', unit='u', nw='g', nb=NONE)})",
          doc="a norm feeding a matmul becomes its prologue"),
    _rule("layer_norm_prologue", "fusion",
          f"(= m {_lin(norm=Q_NONE, eps='0.0', unit='false', x='(LayerNorm e x g gb)', nw=NONE, nb=NONE)})",
          f"(union m {_lin(norm=Q_LAYER_NORM, eps='e', unit='false', nw='g', nb='gb')})"),
    _rule("sibling_matmuls", "fusion",
          f"(= l1 {_lin(Q_NONE, w='w1', b=NONE, r=NONE)}) (= l2 {_lin(Q_NONE, w='(Src k)', b=NONE, r=NONE)}) "
          f"(= m1 (MaxSrc w1)) (< m1 k) (= n1 (Rows w1)) (= n2 (Rows (Src k))) (= c1 (NCat w1)) (< c1 {MAX_SIBLINGS})",
          "(let wc (Cat0 w1 (Src k))) (set (MaxSrc wc) k) (set (Rows wc) (+ n1 n2)) (set (NCat wc) (+ c1 1)) "
          f"(let lc {_lin(Q_NONE, w='wc', b=NONE, r=NONE)}) "
          "(union l1 (SliceLast 0 n1 lc)) (union l2 (SliceLast n1 (+ n1 n2) lc))",
          doc="matmuls sharing an input (Q/K/V, gate/up) -> one matmul over concatenated weights + split"),
    _rule("sibling_matmuls_bias", "fusion",
          f"(= l1 {_lin(Q_NONE, w='w1', b='b1', r=NONE)}) (= l2 {_lin(Q_NONE, w='(Src k)', b='b2', r=NONE)}) "
          "(= (Rank b1) 1) (= (Rank b2) 1) "
          f"(= m1 (MaxSrc w1)) (< m1 k) (= n1 (Rows w1)) (= n2 (Rows (Src k))) (= c1 (NCat w1)) (< c1 {MAX_SIBLINGS})",
          "(let wc (Cat0 w1 (Src k))) (set (MaxSrc wc) k) (set (Rows wc) (+ n1 n2)) (set (NCat wc) (+ c1 1)) "
          "(let bc (Cat0 b1 b2)) (set (Rank bc) 1) "
          f"(let lc {_lin(Q_NONE, w='wc', b='bc', r=NONE)}) "
          "(union l1 (SliceLast 0 n1 lc)) (union l2 (SliceLast n1 (+ n1 n2) lc))"),
    # attention: softmax(q k^T * scale + mask) v
    _rule("attention", "fusion",
          f"(= qk (MatMul false true q k)) (= sc (Mul qk (Const s c))) {_same_shape('sc', 'qk')} "
          f"(= a (Add sc mask)) {_same_shape('a', 'sc')} (= m (MatMul false false (Softmax a) v)) {_QKV_OK}",
          "(union m (Attn s false q k v mask))", doc="softmax(QK^T*scale+mask)V -> attention"),
    _rule("attention_div", "fusion",
          f"(= qk (MatMul false true q k)) (= sc (Div qk (Const s c))) {_same_shape('sc', 'qk')} "
          f"(= a (Add sc mask)) {_same_shape('a', 'sc')} (= m (MatMul false false (Softmax a) v)) {_QKV_OK}",
          "(union m (Attn (/ 1.0 s) false q k v mask))"),
    _rule("attention_nomask", "fusion",
          f"(= qk (MatMul false true q k)) (= sc (Mul qk (Const s c))) {_same_shape('sc', 'qk')} "
          f"(= m (MatMul false false (Softmax sc) v)) {_QKV_OK}",
          f"(union m (Attn s false q k v {NONE}))"),
    _rule("attention_nomask_div", "fusion",
          f"(= qk (MatMul false true q k)) (= sc (Div qk (Const s c))) {_same_shape('sc', 'qk')} "
          f"(= m (MatMul false false (Softmax sc) v)) {_QKV_OK}",
          f"(union m (Attn (/ 1.0 s) false q k v {NONE}))"),
    _rule("attention_gqa", "fusion",
          "(= m (Attn s cz q (RepeatKV r k) (RepeatKV r v) mask)) (= (BH4 k) (BH4 v))",
          "(union m (Attn s cz q k v mask))", doc="repeated k/v heads are the attention op's GQA"),
]

RULES: list[Rule] = ALGEBRA + FUSION
RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)


def program(rules: list[Rule] | None = None) -> str:
    """The schema plus the chosen rules as one egglog program."""
    chosen = RULES if rules is None else rules
    return SCHEMA + "\n".join(r.text() for r in chosen) + "\n"


def select_rules(names=None, exclude=()) -> list[Rule]:
    """Rules by name (all by default) minus `exclude`; unknown names are an error."""
    known = {r.name: r for r in RULES}
    for n in list(names or ()) + list(exclude):
        if n not in known:
            raise ValueError(f"unknown rewrite rule {n!r}; known rules: {sorted(known)}")
    chosen = RULES if names is None else [known[n] for n in names]
    return [r for r in chosen if r.name not in set(exclude)]


def table_facts(perms_by_rank: dict[int, set[tuple[int, ...]]], dtypes: set[str]) -> list[str]:
    """Per-graph lookup tables: permutation composition and identities, and widening casts."""
    facts = []
    for rank, perms in perms_by_rank.items():
        ident = tuple(range(rank))
        facts.append(f'(IdPerm "{_perm(ident)}")')
        if rank >= 2:
            facts.append(f'(SwapLast2 "{_perm(ident[:-2] + (rank - 1, rank - 2))}")')
        for p1 in perms:
            for p2 in perms:
                # transpose(transpose(x, p1), p2)[i] = x axis p1[p2[i]]
                facts.append(f'(set (PermCompose "{_perm(p1)}" "{_perm(p2)}") "{_perm(tuple(p1[i] for i in p2))}")')
    for a in dtypes:
        for b in WIDENS.get(a, ()):
            facts.append(f'(Widens "{a}" "{b}")')
    return facts


# Casts a -> b that are exact for every value of a.
WIDENS = {
    "float16": ("float32", "float64"), "bfloat16": ("float32", "float64"), "float32": ("float64",),
    "int32": ("int64", "float64"), "uint8": ("int32", "int64", "float16", "bfloat16", "float32", "float64"),
    "bool": ("uint8", "int32", "int64", "float16", "bfloat16", "float32", "float64"),
}


def _perm(p) -> str:
    return "[" + ",".join(map(str, p)) + "]"
