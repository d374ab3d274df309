"""SamplerCore, the compiled half of smallmind.sampling.Sampler (compiled: _sampling.pyx)."""
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

class SamplerCore:
    vocab_size: int
    rng: np.random.Generator
    def _configure(self, vocab_size: int, temperature: float, top_k: int, top_p: float,
                   min_p: float, repetition_penalty: float, presence_penalty: float,
                   frequency_penalty: float, penalty_last_n: int,
                   bias_tokens: npt.NDArray[np.int32], bias_values: npt.NDArray[np.float32],
                   rng: np.random.Generator) -> None: ...
    def sample(self, logits: npt.NDArray[np.float32],
               history: Sequence[int] | npt.NDArray[np.integer] | None = None) -> int: ...
    def _sample_at(self, logits: npt.NDArray[np.float32],
                   history: Sequence[int] | npt.NDArray[np.integer] | None, peak: int) -> int: ...
    def _set_threads(self, n_threads: int) -> None: ...
