"""Where every token of a video DiT's attention sequence sits.

Video tokens are frame-major after patchify: index = video_start + (frame * rows + row) * cols + col,
with ``frames x rows x cols`` the *patched* latent grid. Text tokens sit before the video
(CogVideoX), after it (HunyuanVideo, padded to a fixed length) or nowhere (Wan self-attention).

Everything sparse in this project is expressed in these layout units (frames, latent rows / cols)
rather than raw token indices, so one plan serves any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

TextPosition = Literal["none", "before", "after"]

# Model families this layout knows, by diffusers transformer class name.
WAN = "WanTransformer3DModel"
HUNYUAN = "HunyuanVideoTransformer3DModel"
COGVIDEOX = "CogVideoXTransformer3DModel"
SUPPORTED_TRANSFORMERS = (WAN, HUNYUAN, COGVIDEOX)

HUNYUAN_DEFAULT_TEXT_LEN = 256  # HunyuanVideoPipeline's max_sequence_length default


@dataclass(frozen=True)
class TokenLayout:
    """Token layout of one attention call.

    Attributes:
        frames, rows, cols: patched latent grid (tokens per frame = rows * cols).
        text_len: number of text tokens in the joint sequence (padded length), 0 if none.
        text_position: "before" ([text | video]), "after" ([video | text]) or "none".
    """

    frames: int
    rows: int
    cols: int
    text_len: int = 0
    text_position: TextPosition = "none"

    def __post_init__(self) -> None:
        if min(self.frames, self.rows, self.cols) < 1:
            raise ValueError(f"frames, rows and cols must be >= 1, got {self.frames, self.rows, self.cols}")
        if self.text_position not in ("none", "before", "after"):
            raise ValueError(f"text_position must be 'none', 'before' or 'after', got {self.text_position!r}")
        if (self.text_len > 0) != (self.text_position != "none"):
            raise ValueError(
                f"text_len={self.text_len} and text_position={self.text_position!r} disagree: "
                "give both (text_len > 0 with 'before'/'after') or neither"
            )

    # ----------------------------------------------------------------- sizes
    @property
    def frame_len(self) -> int:
        """Tokens per latent frame."""
        return self.rows * self.cols

    @property
    def video_len(self) -> int:
        return self.frames * self.frame_len

    @property
    def seq_len(self) -> int:
        return self.video_len + self.text_len

    @property
    def video_start(self) -> int:
        return self.text_len if self.text_position == "before" else 0

    @property
    def text_start(self) -> int:
        """First text token (== seq_len when there is no text)."""
        return 0 if self.text_position == "before" else self.video_len

    @property
    def video_slice(self) -> slice:
        return slice(self.video_start, self.video_start + self.video_len)

    @property
    def text_slice(self) -> slice:
        return slice(self.text_start, self.text_start + self.text_len)

    # ------------------------------------------------------- index <-> position
    def token_index(self, frame, row, col):
        """Sequence index of video token (frame, row, col); ints or broadcastable tensors."""
        return self.video_start + (frame * self.rows + row) * self.cols + col

    def position(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frame, row, col) of each sequence index; -1 in all three for text tokens."""
        index = torch.as_tensor(index)
        v = index - self.video_start
        is_video = (v >= 0) & (v < self.video_len)
        v = v.clamp(0, self.video_len - 1)
        frame = v // self.frame_len
        rem = v % self.frame_len
        row, col = rem // self.cols, rem % self.cols
        neg = torch.full_like(v, -1)
        return (torch.where(is_video, frame, neg), torch.where(is_video, row, neg), torch.where(is_video, col, neg))

    def is_text(self, index: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(index)
        return (index >= self.text_start) & (index < self.text_start + self.text_len)

    def describe(self) -> str:
        text = f", {self.text_len} text {self.text_position}" if self.text_len else ""
        return f"{self.frames}x{self.rows}x{self.cols} video tokens{text} ({self.seq_len} total)"

    # --------------------------------------------------------------- builders
    @classmethod
    def from_transformer_config(
        cls,
        config: Any,
        latent_frames: int,
        latent_height: int,
        latent_width: int,
        *,
        text_len: int | None = None,
        class_name: str | None = None,
    ) -> "TokenLayout":
        """Layout of a diffusers video transformer's joint attention for a latent of T x H x W.

        Args:
            config: the transformer's ``config`` (or the transformer itself).
            latent_frames, latent_height, latent_width: the latent video (after the VAE, before
                patchify), e.g. Wan 480p 81 frames: 21 x 60 x 104.
            text_len: text tokens in the joint sequence: HunyuanVideo's padded prompt length
                (default 256); CogVideoX defaults to ``max_text_seq_length``; Wan has none.
            class_name: model class if ``config`` does not carry ``_class_name``.
        """
        if hasattr(config, "config") and not isinstance(config, dict):
            class_name = class_name or type(config).__name__
            config = config.config
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        class_name = class_name or get("_class_name")
        if class_name not in SUPPORTED_TRANSFORMERS:
            raise ValueError(
                f"unsupported transformer {class_name!r}: sparse-vdit knows {', '.join(SUPPORTED_TRANSFORMERS)}"
            )
        if class_name == WAN:
            pt, ph, pw = tuple(get("patch_size"))
            text, position = 0, "none"
        elif class_name == HUNYUAN:
            ph = pw = int(get("patch_size"))
            pt = int(get("patch_size_t") or 1)
            text, position = (HUNYUAN_DEFAULT_TEXT_LEN if text_len is None else text_len), "after"
        else:  # CogVideoX / CogVideoX1.5
            ph = pw = int(get("patch_size"))
            pt = int(get("patch_size_t") or 1)
            text, position = (int(get("max_text_seq_length")) if text_len is None else text_len), "before"
        if class_name == WAN and text_len:
            raise ValueError("Wan self-attention has no text tokens; leave text_len unset")
        for name, size, patch in (("frames", latent_frames, pt), ("height", latent_height, ph), ("width", latent_width, pw)):
            if size % patch:
                raise ValueError(
                    f"latent {name} {size} is not a multiple of the patch size {patch} of {class_name}; "
                    "the pipeline pads or rounds the resolution to a multiple first (CogVideoX1.5 pads latent frames)"
                )
        return cls(
            frames=latent_frames // pt,
            rows=latent_height // ph,
            cols=latent_width // pw,
            text_len=text if text else 0,
            text_position=position if text else "none",
        )
