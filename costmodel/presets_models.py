"""Published transformer shapes, each with its source, and their exact parameter counts.

A `ModelShape` is the handful of integers and switches that fix a transformer's tensors:
width, depth, heads (and key/value heads for grouped-query attention), MLP width and kind,
norm kind and placement, biases, embeddings. `MODELS` holds the published shapes under
stable lower-case names; `param_breakdown` / `param_count` count their parameters in closed
form, and `linear_shapes` lists a block's weight matrices (what LoRA can adapt).

What is modelled, and what is not:
- Encoder models (BERT, RoBERTa, DistilBERT) are counted as their masked-LM model
  (`*ForMaskedLM`): no pooler, an MLM head (dense + activation + norm, then the decoder
  tied to the word embeddings plus a vocabulary bias). That is the model a language-modelling
  training step runs, and it is what Hugging Face's `num_parameters()` reports for those
  checkpoints.
- GPT-3's alternating dense / locally banded sparse attention is costed as dense; it does
  not change parameter counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from costmodel.vocab import MLPS, NORM_PLACEMENTS, NORMS, POSITIONALS


@dataclass(frozen=True)
class ModelShape:
    """The shape of a decoder- or encoder-only transformer.

    d_model: residual width; layers: number of blocks; heads: query heads; kv_heads: key/value
    heads (== heads for multi-head attention, fewer for grouped-query attention); ffn: MLP
    inner width; vocab: vocabulary rows; seq: context length (tokens); mlp: "gelu" (two
    matrices) or "swiglu" (gate, up, down); norm: "layernorm" or "rmsnorm"; bias: linear
    layers carry biases; tied_embeddings: the LM head reuses the token embedding;
    positional: "learned" (a position table) or "rope" (no parameters); type_vocab: BERT
    token-type rows (0 when absent); causal: decoder (causal mask) or encoder.
    norm_placement: "pre" (norm before each sublayer, final norm; GPT-2, LLaMA) or "post"
    (norm after each residual add and on the embeddings, no final norm; BERT).
    mlm_head: the LM head is BERT's MLM head (dense + activation + norm before the
    vocabulary projection, plus a vocabulary bias).
    position_rows: rows of a learned position table when it differs from `seq` (RoBERTa
    keeps 2 extra rows for its padding offset); 0 means `seq`.
    """

    name: str
    d_model: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    seq: int
    mlp: str
    norm: str
    bias: bool
    tied_embeddings: bool
    positional: str
    type_vocab: int
    causal: bool
    source: str
    norm_placement: str = "pre"
    mlm_head: bool = False
    position_rows: int = 0

    def __post_init__(self) -> None:
        for field_name in ("d_model", "layers", "heads", "kv_heads", "ffn", "vocab", "seq"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model {self.name!r}: {field_name} must be an integer >= 1, got {value!r}")
        for field_name in ("type_vocab", "position_rows"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"model {self.name!r}: {field_name} must be an integer >= 0, got {value!r}")
        if self.d_model % self.heads:
            raise ValueError(
                f"model {self.name!r}: d_model {self.d_model} is not a multiple of heads {self.heads}"
            )
        if self.kv_heads > self.heads or self.heads % self.kv_heads:
            raise ValueError(
                f"model {self.name!r}: heads {self.heads} must be a multiple of kv_heads {self.kv_heads}"
            )
        for field_name, allowed in (
            ("mlp", MLPS),
            ("norm", NORMS),
            ("positional", POSITIONALS),
            ("norm_placement", NORM_PLACEMENTS),
        ):
            if getattr(self, field_name) not in allowed:
                raise ValueError(
                    f"model {self.name!r}: {field_name} must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, field_name)!r}"
                )
        if self.positional == "rope" and self.position_rows:
            raise ValueError(f"model {self.name!r}: rope has no position table (position_rows must be 0)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def kv_dim(self) -> int:
        """Width of the key and value projections: kv_heads * head_dim (< d_model under GQA)."""
        return self.kv_heads * self.head_dim

    @property
    def n_position_rows(self) -> int:
        if self.positional != "learned":
            return 0
        return self.position_rows or self.seq


# --------------------------------------------------------------------------- counting


def norm_params(shape: ModelShape) -> int:
    """Parameters of one norm over d_model: LayerNorm a scale and a shift, RMSNorm a scale."""
    if shape.norm == "layernorm":
        return 2 * shape.d_model
    return shape.d_model


def linear_shapes(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """Each weight matrix of one block as name -> (fan_in, fan_out).

    Names are the LoRA target names: q, k, v, o for attention; up, down (gelu MLP) or gate,
    up, down (SwiGLU). Under grouped-query attention k and v map d_model -> kv_dim.
    """
    d, kv = shape.d_model, shape.kv_dim
    mats = {"q": (d, d), "k": (d, kv), "v": (d, kv), "o": (d, d)}
    if shape.mlp == "swiglu":
        mats["gate"] = (d, shape.ffn)
    mats["up"] = (d, shape.ffn)
    mats["down"] = (shape.ffn, d)
    return mats


def block_params(shape: ModelShape) -> int:
    """Parameters of one block: its matrices, their biases (fan_out each), two norms."""
    total = 0
    for fan_in, fan_out in linear_shapes(shape).values():
        total += fan_in * fan_out + (fan_out if shape.bias else 0)
    return total + 2 * norm_params(shape)


def param_breakdown(shape: ModelShape) -> dict[str, int]:
    """Exact parameter count by part; the values sum to `param_count(shape)`.

    embeddings = vocab*d (tokens) + position_rows*d (learned positions) + type_vocab*d
    (BERT token types) [+ a norm on their sum, post-norm models];
    blocks = layers * (sum of fan_in*fan_out [+ fan_out bias] over q, k, v, o and the MLP
    matrices + 2 norms); final_norm (pre-norm models);
    lm_head = vocab*d unless tied [+ BERT's MLM transform d*d + d, a norm and a vocab bias].
    """
    d = shape.d_model
    embeddings = (shape.vocab + shape.n_position_rows + shape.type_vocab) * d
    if shape.norm_placement == "post":
        embeddings += norm_params(shape)
    lm_head = 0 if shape.tied_embeddings else shape.vocab * d
    if shape.mlm_head:
        lm_head += d * d + d + norm_params(shape) + shape.vocab
    return {
        "embeddings": embeddings,
        "blocks": shape.layers * block_params(shape),
        "final_norm": norm_params(shape) if shape.norm_placement == "pre" else 0,
        "lm_head": lm_head,
    }


def param_count(shape: ModelShape) -> int:
    """Total parameters of `shape` (see `param_breakdown` for the formula)."""
    return sum(param_breakdown(shape).values())


# --------------------------------------------------------------------------- presets

_HF = "https://huggingface.co/{}/blob/main/config.json"
_GPT3 = (
    "Brown et al. 2020, 'Language Models are Few-Shot Learners', arXiv:2005.14165, Table 2.1 "
    "(d_ff = 4*d_model, context 2048, GPT-2 vocabulary 50257 and architecture)"
)


def _bert(name: str, repo: str, d: int, layers: int, heads: int, vocab: int, **kw) -> ModelShape:
    defaults: dict[str, Any] = dict(
        kv_heads=heads, ffn=4 * d, seq=512, mlp="gelu", norm="layernorm", bias=True,
        tied_embeddings=True, positional="learned", type_vocab=2, causal=False,
        norm_placement="post", mlm_head=True, source=f"HF config.json of {repo}: {_HF.format(repo)}",
    )
    defaults.update(kw)
    return ModelShape(name=name, d_model=d, layers=layers, heads=heads, vocab=vocab, **defaults)


def _gpt(name: str, d: int, layers: int, heads: int, seq: int, source: str) -> ModelShape:
    return ModelShape(
        name=name, d_model=d, layers=layers, heads=heads, kv_heads=heads, ffn=4 * d,
        vocab=50257, seq=seq, mlp="gelu", norm="layernorm", bias=True, tied_embeddings=True,
        positional="learned", type_vocab=0, causal=True, source=source,
    )


def _llama(name: str, repo: str, d: int, layers: int, heads: int, kv_heads: int, ffn: int,
           vocab: int, seq: int, tied: bool) -> ModelShape:
    return ModelShape(
        name=name, d_model=d, layers=layers, heads=heads, kv_heads=kv_heads, ffn=ffn,
        vocab=vocab, seq=seq, mlp="swiglu", norm="rmsnorm", bias=False, tied_embeddings=tied,
        positional="rope", type_vocab=0, causal=True,
        source=f"HF config.json of {repo}: {_HF.format(repo)}",
    )


_PRESETS = (
    # DistilBERT keeps BERT-base's width but 6 layers and drops token types
    # (distilbert-base-uncased: dim 768, n_layers 6, n_heads 12, hidden_dim 3072,
    # max_position_embeddings 512, vocab 30522).
    _bert("distilbert", "distilbert/distilbert-base-uncased", 768, 6, 12, 30522, type_vocab=0),
    # bert-base-uncased: hidden 768, 12 layers, 12 heads, intermediate 3072,
    # max_position_embeddings 512, type_vocab_size 2, vocab 30522.
    _bert("bert-base", "google-bert/bert-base-uncased", 768, 12, 12, 30522),
    # bert-large-uncased: hidden 1024, 24 layers, 16 heads, intermediate 4096.
    _bert("bert-large", "google-bert/bert-large-uncased", 1024, 24, 16, 30522),
    # roberta-base: as BERT-base but vocab 50265, type_vocab_size 1, and
    # max_position_embeddings 514 (512 tokens + RoBERTa's padding offset of 2).
    _bert("roberta-base", "FacebookAI/roberta-base", 768, 12, 12, 50265, type_vocab=1, position_rows=514),
    _bert("roberta-large", "FacebookAI/roberta-large", 1024, 24, 16, 50265, type_vocab=1, position_rows=514),
    # GPT-2: n_embd / n_layer / n_head, n_ctx 1024, vocab 50257, tied LM head.
    _gpt("gpt2-small", 768, 12, 12, 1024, f"HF config.json of openai-community/gpt2: {_HF.format('openai-community/gpt2')}"),
    _gpt("gpt2-medium", 1024, 24, 16, 1024, f"HF config.json of openai-community/gpt2-medium: {_HF.format('openai-community/gpt2-medium')}"),
    _gpt("gpt2-large", 1280, 36, 20, 1024, f"HF config.json of openai-community/gpt2-large: {_HF.format('openai-community/gpt2-large')}"),
    _gpt("gpt2-xl", 1600, 48, 25, 1024, f"HF config.json of openai-community/gpt2-xl: {_HF.format('openai-community/gpt2-xl')}"),
    # GPT-3, Table 2.1 (n_layers, d_model, n_heads, d_head):
    _gpt("gpt3-125m", 768, 12, 12, 2048, _GPT3),
    _gpt("gpt3-350m", 1024, 24, 16, 2048, _GPT3),
    _gpt("gpt3-760m", 1536, 24, 16, 2048, _GPT3),
    # Table 2.1 lists GPT-3 XL as d_model 2048, n_heads 24, d_head 128, which disagree
    # (24 * 128 = 3072). We keep d_model 2048 and d_head 128, hence 16 heads; parameter
    # counts do not depend on the head count.
    _gpt("gpt3-1.3b", 2048, 24, 16, 2048, _GPT3 + "; n_heads 16 = d_model / d_head (the table's 24 is inconsistent)"),
    _gpt("gpt3-2.7b", 2560, 32, 32, 2048, _GPT3),
    _gpt("gpt3-6.7b", 4096, 32, 32, 2048, _GPT3),
    # Table 2.1 lists GPT-3 13B as d_model 5140 with 40 heads of 128 (= 5120). 5140 is not
    # divisible by 40; we use 5120 = n_heads * d_head, as the 13B replications do (e.g.
    # OPT-13B, hidden_size 5120, 40 layers, 40 heads).
    _gpt("gpt3-13b", 5120, 40, 40, 2048, _GPT3 + "; d_model 5120 = n_heads * d_head (the table's 5140 is inconsistent)"),
    _gpt("gpt3-175b", 12288, 96, 96, 2048, _GPT3),
    # LLaMA-2 (Touvron et al. 2023): SwiGLU, RMSNorm, RoPE, no biases, untied head,
    # vocab 32000, context 4096; 70B uses grouped-query attention with 8 kv heads.
    _llama("llama2-7b", "meta-llama/Llama-2-7b-hf", 4096, 32, 32, 32, 11008, 32000, 4096, tied=False),
    _llama("llama2-13b", "meta-llama/Llama-2-13b-hf", 5120, 40, 40, 40, 13824, 32000, 4096, tied=False),
    _llama("llama2-70b", "meta-llama/Llama-2-70b-hf", 8192, 80, 64, 8, 28672, 32000, 4096, tied=False),
    # Llama 3.2: GQA with 8 kv heads, vocab 128256, tie_word_embeddings true,
    # max_position_embeddings 131072 (pretrained at 8192 and extended with rope scaling).
    _llama("llama3.2-1b", "meta-llama/Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128256, 131072, tied=True),
    _llama("llama3.2-3b", "meta-llama/Llama-3.2-3B", 3072, 28, 24, 8, 8192, 128256, 131072, tied=True),
)

#: Published shapes by stable lower-case name.
MODELS: Mapping[str, ModelShape] = MappingProxyType({m.name: m for m in _PRESETS})


def resolve_model(name: str) -> ModelShape:
    """The preset called `name`; ValueError with a one-line message listing valid names."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
