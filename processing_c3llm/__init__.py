"""C3LLM processor and media helpers, registered with `AutoProcessor`."""

from transformers import AutoProcessor

from modeling_c3llm import C3LLMConfig

from .media_c3llm import MediaError, load_audio, load_image, load_video, write_wav
from .processing_c3llm import TASKS, C3LLMProcessor


AutoProcessor.register(C3LLMConfig, C3LLMProcessor, exist_ok=True)
C3LLMProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["C3LLMProcessor", "MediaError", "TASKS", "load_audio", "load_image", "load_video", "write_wav"]
