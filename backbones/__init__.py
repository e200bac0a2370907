"""zigscan.backbones: sequence mixers and the ZigMa network."""

from .conditioning import DEFAULT_VOCAB, CaptionEncoder, WordTokenizer, build_vocab
from .mixers import MixerSpec, get_mixer, list_mixers, register_mixer
from .presets import (
    MODELS,
    PRESETS,
    ModelFileError,
    ModelSpec,
    create_model,
    list_models,
    load_model,
    model_from_config,
    save_model,
)
from .zigma import ZigMa, ZigMaBlock

__all__ = [
    "CaptionEncoder",
    "DEFAULT_VOCAB",
    "MixerSpec",
    "ModelFileError",
    "ModelSpec",
    "MODELS",
    "PRESETS",
    "WordTokenizer",
    "ZigMa",
    "ZigMaBlock",
    "build_vocab",
    "create_model",
    "get_mixer",
    "list_mixers",
    "list_models",
    "load_model",
    "model_from_config",
    "register_mixer",
    "save_model",
]
