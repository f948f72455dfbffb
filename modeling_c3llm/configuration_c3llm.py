"""C3LLM configuration: an LLM backbone plus codec, audio encoder, vision encoder and NAR head sub-configs."""

from transformers import AutoConfig, PreTrainedConfig


# The roles of the special tokens appended to the LLM vocabulary after the acoustic tokens, in vocabulary order. The
# model needs their ids only, which follow from this order; their strings (`<Audio>`, ...) are declared once, by the
# processor (`processing_c3llm.processing_c3llm.SPECIAL_TOKENS`, keyed by these roles), which this remote-code file
# cannot import. `conversion.build_c3llm.extend_tokenizer` adds the strings in this order and checks the ids agree.
SPECIAL_TOKEN_ROLES = (
    "audio_start",
    "audio_end",
    "video_start",
    "video_end",
    "image_start",
    "image_end",
    "audio_feature",
    "video_frame",
    "image_patch",
)


class C3LLMNARConfig(PreTrainedConfig):
    r"""
    Configuration of the non-autoregressive (NAR) head that predicts codebook `k+1` from codebooks `1..k` and the
    condition (paper section 3.3).

    Args:
        hidden_size (`int`, *optional*, defaults to 1024): Width of the NAR transformer.
        num_hidden_layers (`int`, *optional*, defaults to 12): Number of bidirectional transformer layers.
        num_attention_heads (`int`, *optional*, defaults to 16): Attention heads per layer.
        intermediate_size (`int`, *optional*, defaults to 4096): Width of the feed-forward layers.
        dropout (`float`, *optional*, defaults to 0.1): Dropout used in training.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): Epsilon of the layer norms.
        initializer_range (`float`, *optional*, defaults to 0.02): Std of the normal initialisation.
        attention_window (`int`, *optional*): Frames on either side that each frame attends to (the condition is
            always attended; it does not attend to the frames). `None`: every frame. With a window, a frame's codes
            depend on `attention_window * num_hidden_layers` frames on either side at most, so streamed audio
            (`C3LLMAudioStreamer`), whose later frames do not exist yet, gets the same finer codes as unstreamed.
    """

    model_type = "c3llm_nar"
    base_config_key = "nar_config"

    def __init__(
        self,
        hidden_size: int = 1024,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 16,
        intermediate_size: int = 4096,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        attention_window: int | None = None,
        **kwargs,
    ):
        if attention_window is not None and (isinstance(attention_window, bool) or attention_window < 1):
            raise ValueError(f"attention_window must be a positive number of frames or None, got {attention_window!r}.")
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"NAR hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})."
            )
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.dropout = dropout
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.attention_window = attention_window
        super().__init__(**kwargs)

    @property
    def receptive_field(self) -> int | None:
        """Frames on either side that can change a frame's output (`None`: all of them)."""
        return None if self.attention_window is None else self.attention_window * self.num_hidden_layers


class C3LLMMaskedDecoderConfig(C3LLMNARConfig):
    r"""
    Configuration of the masked audio decoder (VATT, MaskGIT): a bidirectional transformer of the NAR head's kind that
    fills masked codes of every codebook from the LLM's hidden states of the prompt (`generate(decoding="masked")`).
    Same arguments as [`C3LLMNARConfig`].
    """

    model_type = "c3llm_masked_decoder"
    base_config_key = "masked_decoder_config"

    def __init__(self, **kwargs):  # (a config subclass without its own __init__ would lose the parent's arguments)
        super().__init__(**kwargs)


def _sub_config(value, default_model_type: str) -> PreTrainedConfig:
    if value is None:
        return AutoConfig.for_model(default_model_type)
    if isinstance(value, dict):
        value = dict(value)
        return AutoConfig.for_model(value.pop("model_type", default_model_type), **value)
    if isinstance(value, PreTrainedConfig):
        return value
    raise ValueError(f"Expected a config or a dict for a C3LLM sub-config, got {type(value).__name__}.")


class C3LLMConfig(PreTrainedConfig):
    r"""
    Configuration of [`C3LLMForConditionalGeneration`].

    The LLM vocabulary is laid out as `[text tokens | one token per code of codebook 1 | SPECIAL_TOKEN_ROLES]`:
    `acoustic_token_offset` is the size of the original text vocabulary and `text_config.vocab_size` the extended size.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*): The causal LM backbone (Gemma by default).
        codec_config (`dict` or `EncodecConfig`, *optional*): The EnCodec codec (24 kHz by default).
        audio_config (`dict` or `ClapAudioConfig`, *optional*): The frozen CLAP audio encoder (HTSAT).
        vision_config (`dict` or `CLIPVisionConfig`, *optional*): The frozen vision encoder for video frames and images.
        nar_config (`dict` or `C3LLMNARConfig`, *optional*): The NAR head.
        masked_decoder_config (`dict` or `C3LLMMaskedDecoderConfig`, *optional*): The masked audio decoder of
            `decoding="masked"`; `None` (the default): the model has none (`c3llm train --stage 3` adds one).
        num_codebooks (`int`, *optional*, defaults to 2): Codebooks used; the LLM predicts the first, the NAR the rest.
        acoustic_token_offset (`int`, *optional*): Id of the acoustic token for code 0. Defaults to the backbone's
            vocabulary size, which is then extended.
        video_fps (`float`, *optional*, defaults to 5.0): Rate at which video frames are sampled.
        video_num_frames (`int`, *optional*, defaults to 50): Maximum frames per clip.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`): Activation of the projector MLPs.
        projector_hidden_size (`int`, *optional*): Hidden width of the projector MLPs (defaults to the LLM's).
        max_audio_seconds (`float`, *optional*, defaults to 10.0): The training clips' length: the longest audio
            `generate` produces by default, and the window of long-form generation beyond it.
        max_generation_seconds (`float`, *optional*, defaults to 600.0): The longest audio `generate` produces in
            windows (and the longest video a prompt keeps).
        nar_loss_weight (`float`, *optional*, defaults to 1.0): Weight of the NAR loss (Eq. 2) in the total loss.
        masked_loss_weight (`float`, *optional*, defaults to 1.0): Weight of the masked decoder's loss in the total loss.
    """

    model_type = "c3llm"
    sub_configs = {
        "text_config": AutoConfig,
        "codec_config": AutoConfig,
        "audio_config": AutoConfig,
        "vision_config": AutoConfig,
        "nar_config": C3LLMNARConfig,
        "masked_decoder_config": C3LLMMaskedDecoderConfig,
    }

    def __init__(
        self,
        text_config=None,
        codec_config=None,
        audio_config=None,
        vision_config=None,
        nar_config=None,
        masked_decoder_config=None,
        num_codebooks: int = 2,
        acoustic_token_offset: int | None = None,
        video_fps: float = 5.0,
        video_num_frames: int = 50,
        projector_hidden_act: str = "gelu",
        projector_hidden_size: int | None = None,
        max_audio_seconds: float = 10.0,
        max_generation_seconds: float = 600.0,
        nar_loss_weight: float = 1.0,
        masked_loss_weight: float = 1.0,
        **kwargs,
    ):
        self.text_config = _sub_config(text_config, "gemma")
        self.codec_config = _sub_config(codec_config, "encodec")
        self.audio_config = _sub_config(audio_config, "clap_audio_model")
        self.vision_config = _sub_config(vision_config, "clip_vision_model")
        if nar_config is None:
            nar_config = C3LLMNARConfig()
        elif isinstance(nar_config, dict):
            nar_config = C3LLMNARConfig(**{k: v for k, v in nar_config.items() if k != "model_type"})
        self.nar_config = nar_config
        if isinstance(masked_decoder_config, dict):
            masked_decoder_config = C3LLMMaskedDecoderConfig(
                **{k: v for k, v in masked_decoder_config.items() if k != "model_type"}
            )
        self.masked_decoder_config = masked_decoder_config

        max_codebooks = self.codec_num_quantizers
        if not 1 <= num_codebooks <= max_codebooks:
            raise ValueError(f"num_codebooks must be between 1 and the codec's {max_codebooks} quantizers, got {num_codebooks}.")
        if video_fps <= 0 or video_num_frames <= 0:
            raise ValueError("video_fps and video_num_frames must be positive.")
        self.num_codebooks = num_codebooks
        if acoustic_token_offset is None:
            # A fresh config: extend the backbone vocabulary by the acoustic and special tokens.
            acoustic_token_offset = self.text_config.vocab_size
            self.text_config.vocab_size = acoustic_token_offset + self.codebook_size + len(SPECIAL_TOKEN_ROLES)
        elif self.text_config.vocab_size < acoustic_token_offset + self.codebook_size + len(SPECIAL_TOKEN_ROLES):
            raise ValueError(
                f"text_config.vocab_size ({self.text_config.vocab_size}) is too small for acoustic tokens at offset "
                f"{acoustic_token_offset}; expected at least {acoustic_token_offset + self.codebook_size + len(SPECIAL_TOKEN_ROLES)}."
            )
        self.acoustic_token_offset = acoustic_token_offset
        self.video_fps = float(video_fps)
        self.video_num_frames = video_num_frames
        self.projector_hidden_act = projector_hidden_act
        self.projector_hidden_size = projector_hidden_size or self.text_config.hidden_size
        self.max_audio_seconds = float(max_audio_seconds)
        self.max_generation_seconds = float(max_generation_seconds)
        self.nar_loss_weight = nar_loss_weight
        self.masked_loss_weight = masked_loss_weight
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)

    # Derived quantities: computed from the sub-configs so that they can never disagree with them.
    @property
    def codebook_size(self) -> int:
        return self.codec_config.codebook_size

    @property
    def codec_num_quantizers(self) -> int:
        return self.codec_config.num_quantizers

    @property
    def frame_rate(self) -> int:
        return self.codec_config.frame_rate

    @property
    def sampling_rate(self) -> int:
        return self.codec_config.sampling_rate

    @property
    def hop_length(self) -> int:
        return self.sampling_rate // self.frame_rate

    def special_token_id(self, role: str) -> int:
        """Id of the special token of a role of `SPECIAL_TOKEN_ROLES` (e.g. "audio_start") in the extended vocabulary."""
        return self.acoustic_token_offset + self.codebook_size + SPECIAL_TOKEN_ROLES.index(role)

    @property
    def audio_start_token_id(self) -> int:
        return self.special_token_id("audio_start")

    @property
    def audio_end_token_id(self) -> int:
        return self.special_token_id("audio_end")

    @property
    def audio_feature_token_id(self) -> int:
        return self.special_token_id("audio_feature")

    @property
    def video_frame_token_id(self) -> int:
        return self.special_token_id("video_frame")

    @property
    def image_patch_token_id(self) -> int:
        return self.special_token_id("image_patch")

    @property
    def video_feature_size(self) -> int:
        """Width of one frame's feature: RGB and optical-flow features of the vision encoder, concatenated."""
        return 2 * self.vision_config.hidden_size

    @property
    def num_image_tokens(self) -> int:
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2 + 1

    @property
    def num_audio_tokens(self) -> int:
        """Local CLAP (HTSAT) feature frames per clip: the final token grid unfolded along time."""
        audio = self.audio_config
        grid = audio.spec_size // _first(audio.patch_stride) // 2 ** (len(audio.depths) - 1)
        return grid * (audio.spec_size // audio.num_mel_bins)


def _first(value) -> int:
    return value[0] if isinstance(value, (list, tuple)) else value


__all__ = ["C3LLMConfig", "C3LLMMaskedDecoderConfig", "C3LLMNARConfig", "SPECIAL_TOKEN_ROLES"]
