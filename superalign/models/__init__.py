"""Models: tiny models built and pretrained here, any HF / GGUF / preset model loaded by spec,
batched sampling with per-token log-probs, and an OpenAI-compatible server and client."""

from superalign.models.load import PRESETS, LoadedModel, ModelLoadError, load_model
from superalign.models.sampling import Samples, default_device, sample, token_logprobs

__all__ = [
    "PRESETS",
    "LoadedModel",
    "ModelLoadError",
    "Samples",
    "default_device",
    "load_model",
    "sample",
    "token_logprobs",
]
