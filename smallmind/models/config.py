"""Model hyper-parameters, one dataclass for every supported architecture."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """Shape and numerics of a decoder-only transformer.

    ``arch`` picks the block: ``"gpt2"`` (LayerNorm with bias, learned positions,
    fused QKV, GELU MLP), ``"llama"`` (RMSNorm, RoPE, grouped-query attention, SwiGLU)
    or ``"gemma3"`` (llama plus QK-norm, post-norms, GeGLU, local/global attention).
    """

    arch: str = "gpt2"
    vocab_size: int = 256
    n_ctx: int = 64
    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 0                # 0 (or None): same as n_head
    head_dim: int = 0                 # 0 (or None): n_embd // n_head
    n_hidden: int = 512               # MLP inner width
    norm_eps: float = 1e-5
    bias: bool = True                 # gpt2 linears carry biases
    tie_embeddings: bool = False      # lm_head shares the token embedding
    # Rotary embeddings (llama / gemma3)
    rope_theta: float = 10000.0
    rope_neox: bool = False           # False: rotate adjacent pairs (GGUF "llama" layout)
    rope_scale: float = 1.0           # linear position scaling (positions are divided by it)
    # Gemma 3
    rope_theta_local: float = 10000.0
    sliding_window: int = 0           # 0: every layer attends to the whole context
    sliding_window_pattern: int = 0   # every Nth layer is global; 0: all global
    attn_scale: float | None = None   # None: 1/sqrt(head_dim)
    embed_scale: float = 1.0          # gemma multiplies embeddings by sqrt(n_embd)
    final_logit_softcap: float = 0.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.n_kv_head:
            self.n_kv_head = self.n_head
        if not self.head_dim:
            if self.n_embd % self.n_head:
                raise ValueError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
            self.head_dim = self.n_embd // self.n_head
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        for name in ("vocab_size", "n_ctx", "n_embd", "n_layer", "n_head", "n_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def learned_positions(self) -> bool:
        return self.arch == "gpt2"

    @classmethod
    def seed_small(cls) -> "ModelConfig":
        """The seed workload's model: 470,528 parameters."""
        return cls(arch="gpt2", vocab_size=256, n_ctx=64, n_embd=128, n_layer=2, n_head=4,
                   n_hidden=512, norm_eps=1e-5, bias=True, tie_embeddings=False)

    def n_params(self) -> int:
        d, h, v = self.n_embd, self.n_hidden, self.vocab_size
        q = self.n_head * self.head_dim
        kv = self.n_kv_head * self.head_dim
        if self.arch == "gpt2":
            per_layer = (2 * 2 * d) + (d * (q + 2 * kv) + q + 2 * kv) + (q * d + d) + (d * h + h) + (h * d + d)
            total = v * d + self.n_ctx * d + self.n_layer * per_layer + 2 * d
        else:
            per_layer = 2 * d + d * (q + 2 * kv) + q * d + 3 * d * h
            total = v * d + self.n_layer * per_layer + d
        if not self.tie_embeddings:
            total += v * d
        return total
