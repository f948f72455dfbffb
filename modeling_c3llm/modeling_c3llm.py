"""PyTorch C3LLM: an LLM with an acoustic vocabulary, audio/video/image projectors, a NAR head and an EnCodec codec."""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, ClapAudioModelWithProjection, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .configuration_c3llm import C3LLMConfig, C3LLMMaskedDecoderConfig, C3LLMNARConfig
from .generation_c3llm import C3LLMGenerationMixin
from .masked_decoding_c3llm import cosine_mask_ratio


@dataclass
class C3LLMOutputWithPast(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
        `lm_loss + nar_loss_weight * nar_loss` (paper Eq. 1 + Eq. 2), `+ masked_loss_weight * masked_loss` with a
        masked decoder.
    lm_loss (`torch.FloatTensor`, *optional*):
        LLM cross-entropy on the target span (coarse acoustic tokens or caption tokens), Eq. 1.
    nar_loss (`torch.FloatTensor`, *optional*):
        NAR cross-entropy on codebooks 2..K, averaged over levels, Eq. 2.
    masked_loss (`torch.FloatTensor`, *optional*):
        The masked decoder's cross-entropy on the masked codes (see `compute_masked_loss`).
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
        LLM logits.
    past_key_values (`Cache`, *optional*):
        The LLM's key/value cache.
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    nar_loss: torch.FloatTensor | None = None
    masked_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: object | None = None


class C3LLMProjector(nn.Module):
    """
    Two-layer MLP from an encoder's feature width into the LLM's hidden size. The frozen encoder's features are first
    standardized per channel, `(x - feature_bias) * feature_scale` (identity until `fit_standardization`): frozen
    encoders put a large shared offset on every channel and the clip-to-clip differences, which carry the content, are
    a small part of it.
    """

    def __init__(self, in_features: int, config: C3LLMConfig):
        super().__init__()
        self.in_features = in_features
        self.feature_bias = nn.Buffer(torch.zeros(in_features))
        self.feature_scale = nn.Buffer(torch.ones(in_features))
        self.linear_1 = nn.Linear(in_features, config.projector_hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.projector_hidden_size, config.text_config.hidden_size)

    @property
    def is_standardized(self) -> bool:
        return bool(self.feature_bias.any() or (self.feature_scale != 1).any())

    @torch.no_grad()
    def fit_standardization(self, features: torch.Tensor, eps: float = 1e-5) -> None:
        """Sets the per-channel mean and 1/std from encoder features `(num_vectors, in_features)`."""
        features = features.double()
        self.feature_bias.copy_(features.mean(0))
        self.feature_scale.copy_(1.0 / (features.std(0, unbiased=False) + eps))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = (features - self.feature_bias) * self.feature_scale
        return self.linear_2(self.act(self.linear_1(features)))


def sinusoidal_embeddings(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sin/cos embeddings of integer `positions` (any shape) -> `positions.shape + (dim,)`."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float().unsqueeze(-1) * freqs
    embeddings = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(embeddings, (0, dim - 2 * half))


class C3LLMNARLayer(GradientCheckpointingLayer):
    """Pre-norm bidirectional transformer layer."""

    def __init__(self, config: C3LLMNARConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.dropout = config.dropout
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        qkv = self.qkv_proj(self.self_attn_layer_norm(hidden_states))
        query, key, value = qkv.view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0
        )
        attn = attn.transpose(1, 2).reshape(batch, length, width)
        hidden_states = hidden_states + F.dropout(self.out_proj(attn), self.dropout, self.training)
        mlp = self.fc2(F.gelu(self.fc1(self.final_layer_norm(hidden_states))))
        return hidden_states + F.dropout(mlp, self.dropout, self.training)


class C3LLMCodesTransformer(nn.Module):
    r"""
    What the NAR head and the masked decoder share: a condition projected into the transformer's width and placed
    before the audio frames along the sequence (segment and sinusoidal position embeddings on both), bidirectional
    layers over the whole, and a final norm on the frames. Subclasses embed the codes and own the output heads.
    """

    def __init__(self, config: C3LLMConfig, sizes: C3LLMNARConfig):
        super().__init__()
        self.hidden_size = sizes.hidden_size
        self.condition_proj = nn.Linear(config.text_config.hidden_size, sizes.hidden_size)
        self.segment_embeddings = nn.Embedding(2, sizes.hidden_size)
        self.layers = nn.ModuleList(C3LLMNARLayer(sizes) for _ in range(sizes.num_hidden_layers))
        self.norm = nn.LayerNorm(sizes.hidden_size, eps=sizes.layer_norm_eps)
        self.attention_window = getattr(sizes, "attention_window", None)

    def encode(
        self,
        condition: torch.Tensor,
        condition_mask: torch.Tensor,
        acoustic: torch.Tensor,
        frames_mask: torch.Tensor,
    ) -> torch.Tensor:
        """`condition (batch, cond_len, llm_hidden)` and embedded frames `(batch, frames, hidden)` -> the frames'
        final hidden states `(batch, frames, hidden)`."""
        positions = torch.arange(acoustic.shape[1], device=acoustic.device)
        acoustic = acoustic + self.segment_embeddings.weight[1]
        acoustic = acoustic + sinusoidal_embeddings(positions, self.hidden_size).to(acoustic.dtype)
        condition = self.condition_proj(condition) + self.segment_embeddings.weight[0]
        condition_positions = (condition_mask.long().cumsum(-1) - 1).clamp(min=0)
        condition = condition + sinusoidal_embeddings(condition_positions, self.hidden_size).to(condition.dtype)

        hidden_states = torch.cat([condition, acoustic], dim=1)
        key_mask = torch.cat([condition_mask, frames_mask], dim=1).bool()
        # Without padding no mask at all, so that SDPA may use its fused kernels.
        attention_mask = None if bool(key_mask.all()) else key_mask[:, None, None, :]
        if self.attention_window is not None:  # frames see the condition and their neighbours; the condition itself
            local = self._local_mask(condition.shape[1], acoustic.shape[1], acoustic.device)
            attention_mask = local if attention_mask is None else attention_mask & local
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask)
        return self.norm(hidden_states[:, condition.shape[1] :])


    def _local_mask(self, condition_length: int, frames: int, device: torch.device) -> torch.Tensor:
        """`(1, 1, length, length)`: the condition attends to the condition; a frame to the condition and to the
        frames within `attention_window` of it."""
        length = condition_length + frames
        index = torch.arange(length, device=device)
        is_frame = index >= condition_length
        near = (index[:, None] - index[None, :]).abs() <= self.attention_window
        allowed = ~is_frame[None, :] | (is_frame[:, None] & near)
        return allowed[None, None]


class C3LLMNARHead(C3LLMCodesTransformer):
    r"""
    Non-autoregressive transformer of paper section 3.3: predicts codebook `k+1` for every frame at once from the
    codes of codebooks `1..k` (summed embeddings) and the condition (the prompt's LLM input embeddings: text tokens or
    projected video/image features), concatenated along the sequence and attended bidirectionally.
    """

    def __init__(self, config: C3LLMConfig):
        super().__init__(config, config.nar_config)
        levels = config.num_codebooks - 1
        self.code_embeddings = nn.ModuleList(
            nn.Embedding(config.codebook_size, self.hidden_size) for _ in range(levels)
        )
        self.level_embeddings = nn.Embedding(levels, self.hidden_size)
        self.heads = nn.ModuleList(nn.Linear(self.hidden_size, config.codebook_size) for _ in range(levels))

    def forward(
        self,
        condition_embeds: torch.Tensor,
        condition_mask: torch.Tensor,
        codes: torch.LongTensor,
        frames_mask: torch.Tensor,
    ) -> torch.Tensor:
        r"""
        Args:
            condition_embeds (`torch.Tensor` of shape `(batch, cond_len, llm_hidden)`): prompt input embeddings.
            condition_mask (`torch.BoolTensor` of shape `(batch, cond_len)`): which condition positions are real.
            codes (`torch.LongTensor` of shape `(batch, k, frames)`): codebooks `1..k` (any value where masked).
            frames_mask (`torch.BoolTensor` of shape `(batch, frames)`): which frames are real.

        Returns:
            `torch.Tensor` of shape `(batch, frames, codebook_size)`: logits of codebook `k+1`.
        """
        level = codes.shape[1] - 1
        codes = codes.clamp(min=0)
        acoustic = sum(self.code_embeddings[j](codes[:, j]) for j in range(level + 1))
        acoustic = acoustic + self.level_embeddings.weight[level]
        return self.heads[level](self.encode(condition_embeds, condition_mask, acoustic, frames_mask))


class C3LLMMaskedDecoder(C3LLMCodesTransformer):
    r"""
    Masked audio decoder (VATT's, after MaskGIT and SoundStorm): given the LLM's final hidden states of the prompt and
    the codes of every codebook with some masked (negative values), predicts codebook `level` at every frame. Each
    codebook has its own embedding (with a mask row) and output head; the level being predicted is embedded too.
    Decoding (`generate(decoding="masked")`) fills codebook 1 in a few iterations, then each finer codebook in one.
    """

    def __init__(self, config: C3LLMConfig):
        super().__init__(config, config.masked_decoder_config)
        self.mask_id = config.codebook_size
        levels = config.num_codebooks
        self.code_embeddings = nn.ModuleList(
            nn.Embedding(config.codebook_size + 1, self.hidden_size) for _ in range(levels)
        )
        self.level_embeddings = nn.Embedding(levels, self.hidden_size)
        self.heads = nn.ModuleList(nn.Linear(self.hidden_size, config.codebook_size) for _ in range(levels))

    def hidden_states(
        self,
        condition_states: torch.Tensor,
        condition_mask: torch.Tensor,
        codes: torch.LongTensor,
        level: int | torch.LongTensor,
        frames_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The frames' final hidden states `(batch, frames, hidden)`, before the output head of `level`."""
        codes = codes.masked_fill(codes < 0, self.mask_id)
        acoustic = sum(embedding(codes[:, j]) for j, embedding in enumerate(self.code_embeddings))
        level = torch.as_tensor(level, device=codes.device).expand(codes.shape[0])
        acoustic = acoustic + self.level_embeddings(level)[:, None, :]
        return self.encode(condition_states, condition_mask, acoustic, frames_mask)

    def forward(
        self,
        condition_states: torch.Tensor,
        condition_mask: torch.Tensor,
        codes: torch.LongTensor,
        level: int,
        frames_mask: torch.Tensor,
    ) -> torch.Tensor:
        r"""
        Args:
            condition_states (`torch.Tensor` of shape `(batch, cond_len, llm_hidden)`): the LLM's final hidden states
                of the prompt.
            condition_mask (`torch.BoolTensor` of shape `(batch, cond_len)`): which prompt positions are real.
            codes (`torch.LongTensor` of shape `(batch, num_codebooks, frames)`): known codes, negative where masked.
            level (`int`): the codebook (0-based) to predict.
            frames_mask (`torch.BoolTensor` of shape `(batch, frames)`): which frames are real.

        Returns:
            `torch.Tensor` of shape `(batch, frames, codebook_size)`: logits of codebook `level`.
        """
        return self.heads[level](self.hidden_states(condition_states, condition_mask, codes, level, frames_mask))


class C3LLMPreTrainedModel(PreTrainedModel):
    config_class = C3LLMConfig
    base_model_prefix = "c3llm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _skip_keys_device_placement = ["past_key_values"]
    _no_split_modules = ["C3LLMNARLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, C3LLMProjector):
            init.zeros_(module.feature_bias)
            init.ones_(module.feature_scale)


class C3LLMForConditionalGeneration(C3LLMPreTrainedModel, C3LLMGenerationMixin):
    r"""
    C3LLM (arXiv 2405.16136): one decoder-only LLM whose vocabulary is extended with one token per code of EnCodec
    codebook 1 and modality markers. Video frames (RGB + optical flow), images and audio (CLAP) enter as projected
    embeddings; the LLM predicts coarse acoustic tokens or caption tokens, the NAR head predicts the finer codebooks and
    EnCodec decodes the waveform. One `generate` ([`C3LLMGenerationMixin`]) serves every task; the prompt built by
    `C3LLMProcessor` decides which.
    """

    _frozen_modules = ("codec", "audio_encoder", "vision_encoder")
    # No tied weights of its own; a dict (not None) lets PEFT find the language model's tied lm_head/embed_tokens.
    _tied_weights_keys = {}
    # The loss is a per-batch mean: a plain Trainer must not rescale it by `num_items_in_batch`.
    accepts_loss_kwargs = False

    def __init__(self, config: C3LLMConfig):
        super().__init__(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.codec = AutoModel.from_config(config.codec_config)
        self.audio_encoder = ClapAudioModelWithProjection(config.audio_config)
        self.vision_encoder = AutoModel.from_config(config.vision_config)
        audio = config.audio_config
        audio_width = audio.patch_embeds_hidden_size * 2 ** (len(audio.depths) - 1)  # HTSAT's last stage width
        self.audio_projector = C3LLMProjector(audio_width + audio.projection_dim, config)
        self.video_projector = C3LLMProjector(config.video_feature_size, config)
        self.image_projector = C3LLMProjector(config.vision_config.hidden_size, config)
        self.nar_head = C3LLMNARHead(config) if config.num_codebooks > 1 else None
        self.masked_decoder = C3LLMMaskedDecoder(config) if config.masked_decoder_config is not None else None
        self.freeze_encoders()
        self.post_init()
        self.generation_config = self.default_generation_config(config)

    def freeze_encoders(self) -> None:
        """Freezes the codec and the CLAP and vision encoders (the paper trains only projectors, NAR and LoRA)."""
        for name in self._frozen_modules:
            getattr(self, name).requires_grad_(False).eval()

    def add_masked_decoder(self, num_layers: int | None = None) -> C3LLMMaskedDecoder:
        """Gives a model without one a freshly initialised masked decoder with the NAR head's width, heads and MLP
        and `num_layers` layers (default: the NAR head's), records it in the config and returns it. (Other sizes:
        set `config.masked_decoder_config` before building the model.)"""
        if self.masked_decoder is not None:
            raise ValueError("This model already has a masked decoder.")
        nar = self.config.nar_config
        sizes = C3LLMMaskedDecoderConfig(
            hidden_size=nar.hidden_size, num_hidden_layers=num_layers or nar.num_hidden_layers,
            num_attention_heads=nar.num_attention_heads, intermediate_size=nar.intermediate_size, dropout=nar.dropout,
        )  # fmt: skip
        self.config.masked_decoder_config = sizes
        decoder = C3LLMMaskedDecoder(self.config)
        decoder.apply(self._init_weights)
        self.masked_decoder = decoder.to(device=self.device, dtype=self.dtype)
        return self.masked_decoder

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        model.freeze_encoders()  # loading re-creates some codec parameters (weight norm) as trainable
        return model

    def train(self, mode: bool = True):
        """Frozen encoders and the codec stay in eval mode (no dropout, fixed batch-norm statistics)."""
        super().train(mode)
        for name in self._frozen_modules:
            getattr(self, name).eval()
        return self

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Saves weights (safetensors), configs and, for `trust_remote_code` loading, the code and full `auto_map`."""
        if self._auto_class is not None:
            name = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.update({"AutoModelForTextToWaveform": name, "AutoModelForMultimodalLM": name})
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    # ---- modality encoders -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_audio_features(self, input_features: torch.Tensor, is_longer: torch.Tensor | None = None) -> torch.Tensor:
        """Frozen CLAP local features ⊕ the clip embedding: `(num_audios, num_audio_tokens, width)`."""
        encoded = self.audio_encoder(input_features=input_features, is_longer=is_longer)
        local = encoded.last_hidden_state.mean(dim=2).transpose(1, 2)  # (batch, time, channels)
        clip = encoded.audio_embeds[:, None, :].expand(-1, local.shape[1], -1)
        return torch.cat([local, clip], dim=-1)

    @torch.no_grad()
    def encode_video_frames(self, pixel_values_videos: torch.Tensor, flow_values_videos: torch.Tensor) -> torch.Tensor:
        """Frozen vision-encoder features of every RGB frame ⊕ its optical flow: `(num_videos, frames, width)`."""
        batch, frames = pixel_values_videos.shape[:2]
        rgb = self.vision_encoder(pixel_values=pixel_values_videos.flatten(0, 1)).pooler_output
        flow = self.vision_encoder(pixel_values=flow_values_videos.flatten(0, 1)).pooler_output
        return torch.cat([rgb, flow], dim=-1).view(batch, frames, -1)

    @torch.no_grad()
    def encode_image_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen vision-encoder patch features: `(num_images, num_image_tokens, width)`."""
        return self.vision_encoder(pixel_values=pixel_values).last_hidden_state

    def get_audio_features(self, input_features: torch.Tensor, is_longer: torch.Tensor | None = None) -> torch.Tensor:
        """CLAP local features fused with the clip embedding, projected: `(num_audios, num_audio_tokens, hidden)`."""
        return self.audio_projector(self.encode_audio_features(input_features, is_longer))

    def _video_inputs(
        self,
        pixel_values_videos: torch.Tensor | None,
        flow_values_videos: torch.Tensor | None,
        video_features: torch.Tensor | None,
    ) -> torch.Tensor:
        if video_features is None:
            if pixel_values_videos is None or flow_values_videos is None:
                raise ValueError("Video inputs need both `pixel_values_videos` and `flow_values_videos`, or `video_features`.")
            video_features = self.encode_video_frames(pixel_values_videos, flow_values_videos)
        if video_features.shape[-1] != self.config.video_feature_size:
            raise ValueError(
                f"video_features have width {video_features.shape[-1]}, but this model expects "
                f"{self.config.video_feature_size} (RGB + optical-flow features of its vision encoder, concatenated)."
            )
        return video_features.to(self.video_projector.linear_1.weight.dtype)

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor | None = None,
        flow_values_videos: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-frame RGB and optical-flow features, concatenated and projected: `(num_videos, frames, hidden)`."""
        return self.video_projector(self._video_inputs(pixel_values_videos, flow_values_videos, video_features))

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision-encoder patch features, projected: `(num_images, num_image_tokens, hidden)`."""
        return self.image_projector(self.encode_image_patches(pixel_values))

    @torch.no_grad()
    def fit_projector_standardization(
        self, batches: Iterable[Mapping[str, Any]], refit: bool = True
    ) -> dict[str, int]:
        """
        Sets each projector's input standardization (see `C3LLMProjector`) from the frozen encoders' features of
        `batches` (processor outputs); returns how many feature vectors each modality gave. A projector that gets none
        keeps its standardization, and so does one already standardized when `refit=False`.
        """
        collected: dict[str, list[torch.Tensor]] = {"audio": [], "video": [], "image": []}
        for batch in batches:
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            if batch.get("input_features") is not None:
                features = self.encode_audio_features(batch["input_features"], batch.get("is_longer"))
                collected["audio"].append(features.flatten(0, 1))
            if batch.get("video_features") is not None or batch.get("pixel_values_videos") is not None:
                video = self._video_inputs(
                    batch.get("pixel_values_videos"), batch.get("flow_values_videos"), batch.get("video_features")
                )
                mask = batch.get("video_frames_mask")
                collected["video"].append(video[mask.bool()] if mask is not None else video.flatten(0, 1))
            if batch.get("pixel_values") is not None:
                collected["image"].append(self.encode_image_patches(batch["pixel_values"]).flatten(0, 1))
        for name, parts in collected.items():
            projector = getattr(self, f"{name}_projector")
            if parts and (refit or not projector.is_standardized):
                projector.fit_standardization(torch.cat(parts).float())
        return {name: sum(len(part) for part in parts) for name, parts in collected.items()}

    @staticmethod
    def _scatter_features(
        input_ids: torch.LongTensor, inputs_embeds: torch.Tensor, token_id: int, features: torch.Tensor, name: str
    ) -> torch.Tensor:
        mask = input_ids == token_id
        if int(mask.sum()) != features.shape[0]:
            raise ValueError(
                f"The prompt has {int(mask.sum())} {name} placeholder tokens but {features.shape[0]} {name} feature "
                "vectors were given; build the inputs with C3LLMProcessor so that they match."
            )
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features.to(inputs_embeds.dtype))

    def get_multimodal_embeddings(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        is_longer: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        flow_values_videos: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        video_frames_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LLM input embeddings with the audio, video and image placeholders replaced by projected features."""
        if input_ids.max() >= self.config.text_config.vocab_size or input_ids.min() < 0:
            raise ValueError(f"input_ids must lie in [0, {self.config.text_config.vocab_size}); got out-of-range ids.")
        inputs_embeds = self.get_input_embeddings()(input_ids)
        config = self.config
        if input_features is not None:
            audio = self.get_audio_features(input_features, is_longer).flatten(0, 1)
            inputs_embeds = self._scatter_features(input_ids, inputs_embeds, config.audio_feature_token_id, audio, "audio")
        if pixel_values_videos is not None or video_features is not None:
            video = self.get_video_features(pixel_values_videos, flow_values_videos, video_features)
            if video_frames_mask is None:
                video_frames_mask = torch.ones(video.shape[:2], dtype=torch.bool, device=video.device)
            video = video[video_frames_mask.bool()]
            inputs_embeds = self._scatter_features(input_ids, inputs_embeds, config.video_frame_token_id, video, "video")
        if pixel_values is not None:
            image = self.get_image_features(pixel_values).flatten(0, 1)
            inputs_embeds = self._scatter_features(input_ids, inputs_embeds, config.image_patch_token_id, image, "image")
        for given, token_id, name in (
            (input_features, config.audio_feature_token_id, "audio"),
            (pixel_values_videos if video_features is None else video_features, config.video_frame_token_id, "video"),
            (pixel_values, config.image_patch_token_id, "image"),
        ):
            if given is None and bool((input_ids == token_id).any()):
                raise ValueError(
                    f"The prompt has {int((input_ids == token_id).sum())} {name} placeholder tokens but no {name} "
                    "inputs were given; pass the processor's whole output to the model."
                )
        return inputs_embeds

    # ---- codec -------------------------------------------------------------------------------------------------
    def encode_audio(self, input_values: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.LongTensor:
        """EnCodec codes of the first `num_codebooks` codebooks: `(batch, num_codebooks, frames)`."""
        codec = self.codec
        bandwidth = next(
            bw
            for bw in codec.config.target_bandwidths
            if codec.quantizer.get_num_quantizers_for_bandwidth(bw) >= self.config.num_codebooks
        )
        with torch.no_grad():
            codes = codec.encode(input_values, padding_mask=padding_mask, bandwidth=bandwidth).audio_codes
        return codes[0, :, : self.config.num_codebooks]

    def decode_audio(self, audio_codes: torch.LongTensor, frames_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Waveforms `(batch, channels, frames * hop_length)` from codes; zero after each clip's last valid frame."""
        with torch.no_grad():
            audio = self.codec.decode(audio_codes.clamp(min=0)[None], [None]).audio_values
        if frames_mask is not None:
            samples = frames_mask.long().sum(-1) * self.config.hop_length
            valid = torch.arange(audio.shape[-1], device=audio.device)[None] < samples[:, None]
            audio = audio * valid[:, None, :]
        return audio

    # ---- training ----------------------------------------------------------------------------------------------
    def compute_nar_loss(
        self,
        condition_embeds: torch.Tensor,
        condition_mask: torch.Tensor,
        audio_codes: torch.LongTensor,
    ) -> torch.Tensor:
        """Eq. 2: cross-entropy of the NAR head on each codebook `2..K` given the previous ones, averaged over levels."""
        frames_mask = audio_codes[:, 0] >= 0
        losses = []
        for level in range(1, self.config.num_codebooks):
            logits = self.nar_head(condition_embeds, condition_mask, audio_codes[:, :level], frames_mask)
            losses.append(F.cross_entropy(logits[frames_mask].float(), audio_codes[:, level][frames_mask]))
        return torch.stack(losses).mean()

    def sample_masking(
        self, frames_mask: torch.BoolTensor, generator: torch.Generator | None = None
    ) -> tuple[torch.LongTensor, torch.BoolTensor]:
        """The masked objective's corruption of a batch: per example a codebook, uniformly, and a share
        `cosine_mask_ratio(u)`, `u ~ U(0, 1)`, of its real frames (at least one), chosen uniformly. Returns the
        levels `(batch,)` and the masked frames `(batch, frames)`."""
        batch, frames = frames_mask.shape
        device = frames_mask.device
        level = torch.randint(self.config.num_codebooks, (batch,), generator=generator, device=device)
        ratio = cosine_mask_ratio(torch.rand(batch, generator=generator, device=device)).to(device)
        lengths = frames_mask.sum(-1)
        count = (ratio * lengths).ceil().long().clamp(min=1)
        scores = torch.rand(batch, frames, generator=generator, device=device).masked_fill(~frames_mask, 2.0)
        rank = scores.argsort(-1).argsort(-1)  # each frame's rank among its clip's random scores; padding last
        return level, (rank < count[:, None]) & frames_mask

    def compute_masked_loss(
        self,
        condition_states: torch.Tensor,
        condition_mask: torch.Tensor,
        audio_codes: torch.LongTensor,
        level: torch.LongTensor | None = None,
        token_mask: torch.BoolTensor | None = None,
    ) -> torch.Tensor:
        r"""
        The masked decoder's objective (SoundStorm's, with MaskGIT's cosine schedule): cross-entropy on the masked
        codes of codebook `level`, given the lower codebooks whole, the unmasked codes of `level` and the higher
        codebooks all masked. `level` `(batch,)` and `token_mask` `(batch, frames)` default to `sample_masking`.
        """
        frames_mask = audio_codes[:, 0] >= 0
        if level is None or token_mask is None:
            level, token_mask = self.sample_masking(frames_mask)
        token_mask = token_mask & frames_mask
        levels = torch.arange(audio_codes.shape[1], device=audio_codes.device)[None, :, None]
        chosen = level.to(audio_codes.device)[:, None, None]
        hidden = (levels > chosen) | ((levels == chosen) & token_mask[:, None, :])
        states = self.masked_decoder.hidden_states(
            condition_states, condition_mask, audio_codes.masked_fill(hidden, -1), level, frames_mask
        )
        # The output heads run on the masked frames only, each example's on its own codebook.
        targets = audio_codes.gather(1, chosen.expand(-1, 1, audio_codes.shape[-1]))[:, 0][token_mask]
        states, frame_levels = states[token_mask], level[:, None].expand_as(token_mask)[token_mask]
        loss = states.new_zeros((), dtype=torch.float32)
        for value in frame_levels.unique().tolist():
            rows = frame_levels == value
            logits = self.masked_decoder.heads[value](states[rows]).float()
            loss = loss + F.cross_entropy(logits, targets[rows], reduction="sum")
        return loss / len(targets)

    def prompt_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The LLM's final hidden states of left-padded prompts `(batch, length, hidden)`: the masked decoder's
        condition, from one prefill."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.language_model.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        is_longer: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        flow_values_videos: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        video_frames_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        audio_codes: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        audio_logits_only: bool = False,
        masked_loss_only: bool = False,
        **kwargs,
    ) -> C3LLMOutputWithPast:
        r"""
        input_features (`torch.FloatTensor` of shape `(num_audios, 1, time, mel_bins)`, *optional*):
            CLAP log-mel features of the source audio (audio-to-text); one audio per `<|audio_feature|>` run.
        is_longer (`torch.BoolTensor` of shape `(num_audios, 1)`, *optional*):
            CLAP's flag for clips longer than its window.
        pixel_values (`torch.FloatTensor` of shape `(num_images, 3, height, width)`, *optional*):
            Images for the image-to-audio tasks.
        pixel_values_videos (`torch.FloatTensor` of shape `(num_videos, frames, 3, height, width)`, *optional*):
            Sampled RGB frames.
        flow_values_videos (`torch.FloatTensor` of shape `(num_videos, frames, 3, height, width)`, *optional*):
            Optical flow of the same frames rendered as images.
        video_features (`torch.FloatTensor` of shape `(num_videos, frames, video_feature_size)`, *optional*):
            Precomputed per-frame features, instead of `pixel_values_videos` and `flow_values_videos`.
        video_frames_mask (`torch.BoolTensor` of shape `(num_videos, frames)`, *optional*):
            Which frames are real when videos of different lengths are batched.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Target token ids, `-100` on the prompt and padding (Eq. 1).
        audio_codes (`torch.LongTensor` of shape `(batch_size, num_codebooks, frames)`, *optional*):
            EnCodec codes of the audio targets, `-100` on padding and for examples without audio target (Eq. 2).
        audio_logits_only (`bool`, *optional*, defaults to `False`):
            Computes only the logits audio generation can sample (the acoustic codes and `</Audio>`); the others are
            `-inf`. `generate` sets it for audio outputs, where a large text vocabulary would otherwise make the
            output layer a large share of every step. Not for training (`labels`).
        masked_loss_only (`bool`, *optional*, defaults to `False`):
            Computes the masked decoder's loss alone (`c3llm train --stage 3`): the LLM runs over the prompts only
            (up to the first target position; with causal attention their states are those of the whole sequence),
            without logits or other losses. Needs `labels` and `audio_codes`.
        """
        train_masked = (
            audio_codes is not None and labels is not None and self.masked_decoder is not None
            and self.config.masked_loss_weight > 0
        )  # fmt: skip
        if audio_logits_only and labels is not None:
            raise ValueError("audio_logits_only is for generation; compute training losses with the full logits.")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_multimodal_embeddings(
                input_ids,
                input_features=input_features,
                is_longer=is_longer,
                pixel_values=pixel_values,
                pixel_values_videos=pixel_values_videos,
                flow_values_videos=flow_values_videos,
                video_features=video_features,
                video_frames_mask=video_frames_mask,
            )
        if masked_loss_only:
            return self._masked_loss_only(inputs_embeds, attention_mask, labels, audio_codes, input_ids)
        batch, length = inputs_embeds.shape[:2]
        if position_ids is None and attention_mask is not None:
            # Left padding: positions count real tokens only, so padded and unpadded prompts see the same positions.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        elif position_ids is None:
            # No mask (generate drops an all-ones mask): positions continue after the cached tokens.
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(past, past + length, device=inputs_embeds.device).expand(batch, -1)

        if train_masked:  # the masked decoder's condition: the final hidden states of the prompt positions
            kwargs["output_hidden_states"] = True
        inputs = dict(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                      past_key_values=past_key_values, use_cache=use_cache, **kwargs)
        head = self.language_model.get_output_embeddings()
        if audio_logits_only and type(head) is nn.Linear:  # (a PEFT-wrapped head computes the full logits)
            outputs = self.language_model.model(**inputs)
            logits = self._audio_logits(outputs.last_hidden_state, head.weight, logits_to_keep)
        else:
            outputs = self.language_model(**inputs, logits_to_keep=logits_to_keep)
            logits = outputs.logits

        loss = lm_loss = nar_loss = masked_loss = None
        if labels is not None:
            # Shift the labels, not the logits: slicing the logits would copy them (and their gradient) once more.
            next_labels = F.pad(labels, (0, 1), value=-100)[:, 1:].to(logits.device)
            lm_loss = F.cross_entropy(logits.flatten(0, 1).float(), next_labels.flatten(), ignore_index=-100)
            loss = lm_loss
        if audio_codes is not None and (self.nar_head is not None or self.masked_decoder is not None):
            if labels is None:
                raise ValueError("`audio_codes` needs `labels` too: the NAR condition is the unlabelled prompt.")
            has_audio = (audio_codes[:, 0] >= 0).any(-1)
            if has_audio.any():
                attended = attention_mask.bool() if attention_mask is not None else torch.ones_like(labels, dtype=torch.bool)
                condition_mask = (attended & (labels == -100))
                if input_ids is not None:  # the audio a continuation's prompt holds is among the frames instead
                    condition_mask = self._condition_mask(input_ids, condition_mask)
                condition_mask = condition_mask[has_audio]
                weighted = []
                if self.nar_head is not None:
                    nar_inputs = (inputs_embeds[has_audio], condition_mask, audio_codes[has_audio])
                    if self.config.nar_loss_weight != 0:
                        nar_loss = self.compute_nar_loss(*nar_inputs)
                        weighted.append(nar_loss * self.config.nar_loss_weight)
                    else:  # reported only (stage 1): the frozen head as at inference, without dropout or a graph
                        training = self.nar_head.training
                        self.nar_head.eval()
                        try:
                            with torch.no_grad():
                                nar_loss = self.compute_nar_loss(*nar_inputs)
                        finally:
                            self.nar_head.train(training)
                if train_masked:
                    states = outputs.hidden_states[-1][has_audio]
                    masked_loss = self.compute_masked_loss(states, condition_mask, audio_codes[has_audio])
                    weighted.append(masked_loss * self.config.masked_loss_weight)
                if weighted:  # (the NAR and masked losses need `labels`, so `loss` holds the LLM's)
                    loss = loss + sum(weighted)

        return C3LLMOutputWithPast(
            loss=loss, lm_loss=lm_loss, nar_loss=nar_loss, masked_loss=masked_loss, logits=logits,
            past_key_values=outputs.past_key_values,
        )

    def _masked_loss_only(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.LongTensor | None,
        audio_codes: torch.LongTensor | None,
        input_ids: torch.LongTensor | None = None,
    ) -> C3LLMOutputWithPast:
        """`forward(masked_loss_only=True)`: the masked loss from one LLM pass over the prompt positions."""
        if labels is None or audio_codes is None or self.masked_decoder is None:
            raise ValueError("masked_loss_only needs a masked decoder, `labels` and `audio_codes`.")
        if attention_mask is None:
            attention_mask = torch.ones_like(labels)
        has_audio = (audio_codes[:, 0] >= 0).any(-1)
        if not has_audio.any():
            return C3LLMOutputWithPast()
        targets = labels != -100
        first_target = torch.where(targets.any(-1), targets.long().argmax(-1), labels.shape[1])
        cut = int(first_target[has_audio].max())
        states = self.prompt_states(inputs_embeds[has_audio, :cut], attention_mask[has_audio, :cut])
        condition_mask = attention_mask.bool() & ~targets
        if input_ids is not None:
            condition_mask = self._condition_mask(input_ids, condition_mask)
        condition_mask = condition_mask[has_audio, :cut]
        loss = self.compute_masked_loss(states, condition_mask, audio_codes[has_audio])
        return C3LLMOutputWithPast(loss=loss, masked_loss=loss)

    # ---- audio logits ------------------------------------------------------------------------------------------
    def _audio_logits(self, hidden_states: torch.Tensor, weight: torch.Tensor, logits_to_keep) -> torch.Tensor:
        """Logits of the rows audio generation can sample (the codes, then `</Audio>` after the other markers that
        follow them in the vocabulary), computed over that span of rows; `-inf` elsewhere."""
        config = self.config
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        start, stop = config.acoustic_token_offset, config.audio_end_token_id + 1
        span = F.linear(hidden_states[:, keep], weight[start:stop])
        cap = getattr(config.text_config, "final_logit_softcapping", None)
        if cap is not None:  # Gemma 2 and later cap their logits; the same for the rows computed here
            span = torch.tanh(span / cap) * cap
        logits = span.new_full((*span.shape[:-1], weight.shape[0]), float("-inf"))
        logits[..., start:stop] = span
        logits[..., start + config.codebook_size : stop - 1] = float("-inf")  # markers between the codes and </Audio>
        return logits


__all__ = [
    "C3LLMForConditionalGeneration",
    "C3LLMMaskedDecoder",
    "C3LLMNARHead",
    "C3LLMOutputWithPast",
    "C3LLMPreTrainedModel",
]
