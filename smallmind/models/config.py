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
    n_ctx: int = 64                   # positions a session can hold
    n_ctx_train: int = 0              # positions the model was trained on (0: n_ctx); GPT-2's
                                      # position table has this many rows
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
    rope_dim: int = 0                 # rotated dimensions per head (0: head_dim)
    # Gemma 3
    rope_theta_local: float = 10000.0
    sliding_window: int = 0           # 0: every layer attends to the whole context
    sliding_window_pattern: int = 0   # every Nth layer is global; 0: all global
    attn_scale: float | None = None   # None: 1/sqrt(head_dim)
    embed_scale: float = 1.0          # gemma multiplies embeddings by sqrt(n_embd)
    final_logit_softcap: float = 0.0
    extra: dict = field(default_factory=dict)  # loader facts no model reads (name, file version)

    def __post_init__(self) -> None:
        if not self.n_kv_head:
            self.n_kv_head = self.n_head
        if not self.head_dim:
            if self.n_embd % self.n_head:
                raise ValueError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
            self.head_dim = self.n_embd // self.n_head
        if not self.n_ctx_train:
            self.n_ctx_train = self.n_ctx
        if not self.rope_dim:
            self.rope_dim = self.head_dim
        if self.rope_dim > self.head_dim or self.rope_dim % 2:
            raise ValueError(f"rope_dim={self.rope_dim} must be even and at most head_dim={self.head_dim}")
        if self.learned_positions and self.n_ctx > self.n_ctx_train:
            raise ValueError(f"n_ctx={self.n_ctx} exceeds the n_ctx_train={self.n_ctx_train} positions "
                             "a learned position table holds")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        for name in ("vocab_size", "n_ctx", "n_ctx_train", "n_embd", "n_layer", "n_head", "n_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def learned_positions(self) -> bool:
        return self.arch == "gpt2"

    @classmethod
    def seed_small(cls) -> ModelConfig:
        """The seed workload's model: 470,528 parameters."""
        return cls(arch="gpt2", vocab_size=256, n_ctx=64, n_embd=128, n_layer=2, n_head=4,
                   n_hidden=512, norm_eps=1e-5, bias=True, tie_embeddings=False)

    def n_params(self) -> int:
        """Parameters in the tensors the model needs (:mod:`smallmind.models.spec`)."""
        from .spec import n_params
        return n_params(self)
