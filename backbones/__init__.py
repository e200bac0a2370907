"""zigscan.backbones: sequence mixers and the ZigMa network."""

from .mixers import MixerSpec, get_mixer, list_mixers, register_mixer
from .presets import MODELS, ModelSpec, list_models

__all__ = ["MixerSpec", "ModelSpec", "MODELS", "get_mixer", "list_mixers", "list_models", "register_mixer"]
