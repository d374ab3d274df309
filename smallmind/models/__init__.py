from .config import ModelConfig

__all__ = ["ModelConfig", "build_model"]


def build_model(config: ModelConfig, tensors, n_threads: int = 1):
    """The model class for ``config.arch``, built from loader tensors (the weights repacked
    on ``n_threads`` threads)."""
    from ..errors import UnsupportedModelError
    if config.arch == "gpt2":
        from .gpt2 import GPT2
        return GPT2(config, tensors, n_threads=n_threads)
    if config.arch == "llama":
        from .llama import Llama
        return Llama(config, tensors, n_threads=n_threads)
    if config.arch == "gemma3":
        from .gemma3 import Gemma3
        return Gemma3(config, tensors, n_threads=n_threads)
    raise UnsupportedModelError(f"architecture {config.arch!r} is not supported "
                                "(supported: gpt2, llama, gemma3)")
