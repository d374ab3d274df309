from .config import ModelConfig

__all__ = ["ModelConfig", "build_model"]


def build_model(config: ModelConfig, tensors):
    """The model class for ``config.arch``, built from loader tensors."""
    from ..errors import UnsupportedModelError
    if config.arch == "gpt2":
        from .gpt2 import GPT2
        return GPT2(config, tensors)
    if config.arch == "llama":
        from .llama import Llama
        return Llama(config, tensors)
    if config.arch == "gemma3":
        from .gemma3 import Gemma3
        return Gemma3(config, tensors)
    raise UnsupportedModelError(f"architecture {config.arch!r} is not supported "
                                "(supported: gpt2, llama, gemma3)")
