"""Where every token of a video DiT's attention sequence sits.

Video tokens are frame-major after patchify: index = video_start + (frame * rows + row) * cols + col,
with ``frames x rows x cols`` the *patched* latent grid. Text tokens sit before the video
(CogVideoX), after it (HunyuanVideo, padded to a fixed length) or nowhere (Wan self-attention).
Conditioning tokens that are on no video grid sit right before the grid (``prefix_len``:
HunyuanVideo-Framepack's history latents at 1x/2x/4x, LTX-Video's extra conditioning latents) or
right after it (``suffix_len``: LTX-2's keyframe tokens):

    [text, if "before"] [prefix] [video grid] [suffix] [text, if "after"]

Every token off the grid (text, prefix, suffix) is computed densely by every method: its rows
attend every key and every query attends it (``off_grid``, ``off_grid_spans``).

Everything sparse in this project is expressed in these layout units (frames, latent rows / cols)
rather than raw token indices, so one plan serves any resolution.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

import torch

TextPosition = Literal["none", "before", "after"]


@dataclass(frozen=True)
class TokenLayout:
    """Token layout of one attention call.

    Attributes:
        frames, rows, cols: patched latent grid (tokens per frame = rows * cols).
        text_len: number of text tokens in the joint sequence (padded length), 0 if none.
        text_position: "before" ([text | video]), "after" ([video | text]) or "none".
        prefix_len: conditioning tokens off the grid, right before it (0 if none).
        suffix_len: conditioning tokens off the grid, right after it (0 if none).
    """

    frames: int
    rows: int
    cols: int
    text_len: int = 0
    text_position: TextPosition = "none"
    prefix_len: int = 0
    suffix_len: int = 0

    def __post_init__(self) -> None:
        for name in ("frames", "rows", "cols", "text_len"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy / torch integers hash and compare as ints
        if self.text_len < 0:
            raise ValueError(f"text_len must be an integer >= 0, got {self.text_len}")
        if min(self.frames, self.rows, self.cols) < 1:
            raise ValueError(f"frames, rows and cols must be >= 1, got {self.frames, self.rows, self.cols}")
        if min(self.text_len, self.prefix_len, self.suffix_len) < 0:
            raise ValueError(
                f"text_len, prefix_len and suffix_len must be >= 0, got {self.text_len, self.prefix_len, self.suffix_len}"
            )
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
        return self.video_len + self.text_len + self.prefix_len + self.suffix_len

    @property
    def video_start(self) -> int:
        return (self.text_len if self.text_position == "before" else 0) + self.prefix_len

    @property
    def video_end(self) -> int:
        """One past the last video token."""
        return self.video_start + self.video_len

    @property
    def text_start(self) -> int:
        """First text token (== seq_len when there is no text)."""
        return 0 if self.text_position == "before" else self.video_end + self.suffix_len

    def real_key_counts(self, text_valid_lens: tuple[int, ...]) -> tuple[int, ...]:
        """Per sample, the leading keys that are real when the text (last in the sequence) is
        padded: every token before the text and the sample's ``text_valid_lens[b]`` real ones."""
        return tuple(self.text_start + n for n in text_valid_lens)

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

    def off_grid(self, index: torch.Tensor) -> torch.Tensor:
        """Whether each index is off the video grid (text, prefix or suffix): computed densely."""
        index = torch.as_tensor(index)
        return (index < self.video_start) | (index >= self.video_end)

    @property
    def off_grid_spans(self) -> tuple[tuple[int, int], ...]:
        """The (start, stop) token ranges off the grid: at most two, [0, video_start) and
        [video_end, seq_len); empty ones left out."""
        spans = ((0, self.video_start), (self.video_end, self.seq_len))
        return tuple((a, b) for a, b in spans if b > a)

    def describe(self) -> str:
        text = f", {self.text_len} text {self.text_position}" if self.text_len else ""
        extra = "".join(
            f", {n} conditioning tokens {where} the grid"
            for n, where in ((self.prefix_len, "before"), (self.suffix_len, "after"))
            if n
        )
        return f"{self.frames}x{self.rows}x{self.cols} video tokens{extra}{text} ({self.seq_len} total)"

    # --------------------------------------------------------------- builders
    @classmethod
    def from_latent(
        cls,
        latent_frames: int,
        latent_height: int,
        latent_width: int,
        *,
        patch_size: tuple[int, int, int] = (1, 1, 1),
        text_len: int = 0,
        text_position: TextPosition = "none",
        prefix_len: int = 0,
        suffix_len: int = 0,
    ) -> "TokenLayout":
        """Layout of a joint sequence whose video part is a T x H x W latent patchified by ``patch_size``.

        Args:
            latent_frames, latent_height, latent_width: the latent video (after the VAE, before
                patchify), e.g. Wan 480p 81 frames: 21 x 60 x 104.
            patch_size: (t, h, w) patch; each latent size must be a multiple of its patch.
            text_len, text_position: text tokens in the joint sequence and where they sit.
            prefix_len, suffix_len: conditioning tokens off the grid, right before / after it.

        ``pipelines.families.token_layout_of(transformer, T, H, W)`` reads the patch size and the
        text of a diffusers transformer for you.
        """
        pt, ph, pw = (int(p) for p in patch_size)
        if min(pt, ph, pw) < 1:
            raise ValueError(f"patch sizes must be >= 1, got {patch_size}")
        for name, size, patch in (("frames", latent_frames, pt), ("height", latent_height, ph), ("width", latent_width, pw)):
            if size % patch:
                raise ValueError(
                    f"latent {name} {size} is not a multiple of the patch size {patch}; the pipeline pads or "
                    "rounds the resolution to a multiple first (CogVideoX1.5 pads latent frames)"
                )
        return cls(latent_frames // pt, latent_height // ph, latent_width // pw, text_len, text_position, prefix_len, suffix_len)
