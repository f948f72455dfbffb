"""C3LLM for transformers: config, model and Auto-class registration."""

from transformers import AutoConfig, AutoModel, AutoModelForMultimodalLM, AutoModelForTextToWaveform

from .configuration_c3llm import SPECIAL_TOKEN_ROLES, C3LLMConfig, C3LLMMaskedDecoderConfig, C3LLMNARConfig
from .generation_c3llm import C3LLMAudioGenerationOutput
from .streaming_c3llm import C3LLMAudioStreamer
from .modeling_c3llm import C3LLMForConditionalGeneration, C3LLMOutputWithPast, C3LLMPreTrainedModel


AutoConfig.register(C3LLMConfig.model_type, C3LLMConfig, exist_ok=True)
AutoConfig.register(C3LLMNARConfig.model_type, C3LLMNARConfig, exist_ok=True)
AutoConfig.register(C3LLMMaskedDecoderConfig.model_type, C3LLMMaskedDecoderConfig, exist_ok=True)
for _auto_class in (AutoModel, AutoModelForTextToWaveform, AutoModelForMultimodalLM):
    _auto_class.register(C3LLMConfig, C3LLMForConditionalGeneration, exist_ok=True)
# Saved folders carry the code and an `auto_map`, so they load with `trust_remote_code=True` without this package.
C3LLMConfig.register_for_auto_class()
C3LLMForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = [
    "C3LLMAudioGenerationOutput",
    "C3LLMAudioStreamer",
    "C3LLMConfig",
    "C3LLMForConditionalGeneration",
    "C3LLMMaskedDecoderConfig",
    "C3LLMNARConfig",
    "C3LLMOutputWithPast",
    "C3LLMPreTrainedModel",
    "SPECIAL_TOKEN_ROLES",
]
