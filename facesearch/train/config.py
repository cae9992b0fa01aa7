"""Training configuration: one frozen dataclass, named presets, JSON save/load."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from facesearch.embedder.core.atomic import atomic_write_json
from facesearch.embedder.core.constants import TEMPLATE_FOR_INPUT_SIZE
from facesearch.embedder.core.errors import ModelSpecError

CONFIG_FILE = "config.json"

# MobileFaceNet bottleneck table (Chen et al. 2018, Table 1): expansion t, output channels c,
# repeats n, stride s of the first repeat. https://arxiv.org/abs/1804.07573
MOBILEFACENET_BOTTLENECKS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)

# Same total stride (16) as the full table, 4-16 channels: builds and trains in seconds on a CPU.
TINY_BOTTLENECKS: tuple[tuple[int, int, int, int], ...] = (
    (2, 16, 1, 2),
    (2, 16, 1, 2),
    (2, 16, 1, 1),
    (2, 32, 1, 2),
)

LR_SCHEDULES = ("plateau", "step")
CHECKPOINT_UNITS = ("epochs", "steps")
PRECISIONS = ("auto", "on", "off")
# Fields a resumed run may change: they say how long to train, how to checkpoint, what to measure
# and how to feed the data, not what the model is or which batches it sees.
RESUMABLE_FIELDS = frozenset({"epochs", "checkpoint_every", "checkpoint_unit", "keep_checkpoints", "mixed_precision",
                              "cache", "val_pair_file", "val_image_root"})



@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a model and its training run; saved as `config.json` beside it.

    The backbone maps `(n, input_height, input_width, 3)` float32 images normalised as
    `(x - 127.5) / 128` to `(n, embedding_size)` embeddings. `input_height` and `input_width`
    must be multiples of `total_stride` so the global depthwise conv (GDC) covers the final map
    exactly (7x6 for 112x96, 7x7 for 112x112 with the MobileFaceNet table).
    """

    name: str = "mobilefacenet"
    input_height: int = 112
    input_width: int = 96
    embedding_size: int = 128
    # Backbone shape: stem conv + depthwise channels, bottleneck table (t, c, n, s), 1x1 conv before GDC.
    stem_channels: int = 64
    bottlenecks: tuple[tuple[int, int, int, int], ...] = MOBILEFACENET_BOTTLENECKS
    expand_channels: int = 512
    # ArcFace head: logits = s * cos(theta + m) for the target class.
    arcface_scale: float = 32.0
    arcface_margin: float = 0.5
    # Optimisation: SGD with Nesterov momentum; weight decay as coupled L2 (see train/fit.py).
    batch_size: int = 128
    epochs: int = 30
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 4e-5
    # The paper uses 4e-4 for the layers after the global operator (embedding conv, classifier).
    head_weight_decay: float = 4e-4
    # Learning rate: "plateau" multiplies it by lr_factor after lr_patience epochs without a better
    # val_pair_acc (loss without pairs); "step" multiplies it by lr_factor at each epoch in lr_steps.
    lr_schedule: str = "plateau"
    lr_steps: tuple[int, ...] = ()
    lr_factor: float = 0.1
    lr_patience: int = 2
    min_learning_rate: float = 1e-5
    # Held-out images for the pair-verification callback.
    val_fraction: float = 0.1
    val_pairs: int = 1000
    # Or an LFW-format pair file over aligned crops under val_image_root ("" = the held-out images).
    val_pair_file: str = ""
    val_image_root: str = ""
    flip: bool = True
    seed: int = 0
    # Checkpoints (optimizer state included) every checkpoint_every epochs or optimizer steps;
    # keep_checkpoints > 0 deletes all but the latest that many.
    checkpoint_every: int = 1
    checkpoint_unit: str = "epochs"
    keep_checkpoints: int = 0
    # "auto": mixed_float16 when TensorFlow sees a GPU; "on" / "off" force it.
    mixed_precision: str = "auto"
    # Decoded, resized training images kept after the first epoch: "" no, "memory", or a file path.
    cache: str = ""

    def __post_init__(self) -> None:
        # JSON gives lists; keep the table hashable and comparable.
        object.__setattr__(self, "bottlenecks", tuple(tuple(int(v) for v in row) for row in self.bottlenecks))
        object.__setattr__(self, "lr_steps", tuple(int(v) for v in self.lr_steps))
        _validate(self)

    @property
    def total_stride(self) -> int:
        """Downsampling from the input to the GDC map: 2 (stem) times every bottleneck stride."""
        return 2 * math.prod(row[3] for row in self.bottlenecks)

    @property
    def gdc_kernel(self) -> tuple[int, int]:
        """`(height, width)` of the final feature map, i.e. the GDC kernel size."""
        return self.input_height // self.total_stride, self.input_width // self.total_stride

    @property
    def alignment_template(self) -> str:
        """Face alignment the input size implies: `sphereface-112x96`, `arcface-112x112` or `none`."""
        return TEMPLATE_FOR_INPUT_SIZE.get((self.input_height, self.input_width), "none")

    def to_dict(self) -> dict:
        """JSON-ready dict of every field (the bottleneck table as lists)."""
        d = dataclasses.asdict(self)
        d["bottlenecks"] = [list(row) for row in self.bottlenecks]
        d["lr_steps"] = list(self.lr_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> TrainConfig:
        """Build a config from JSON data; keys it lacks (a config.json of an older version) take their defaults.

        Raises:
            ModelSpecError: `d` is not an object, has unknown keys or invalid values.
        """
        if not isinstance(d, dict):
            raise ModelSpecError(f"{source}: expected a JSON object, got {type(d).__name__}")
        unknown = sorted(d.keys() - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ModelSpecError(f"{source}: unknown config keys {unknown}; was it written by a newer facesearch?")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ModelSpecError(f"{source}: invalid config: {e}") from e

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as JSON atomically; a folder gets `config.json` inside it.

        Returns:
            The path written.
        """
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a config from a JSON file or from a run folder holding `config.json`.

        Raises:
            ModelSpecError: the file is missing, not JSON or not a valid config.
        """
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelSpecError(
                f"no training config at '{path}': is this a folder made by `facesearch train`?"
            ) from None
        except (OSError, json.JSONDecodeError) as e:
            raise ModelSpecError(f"cannot read training config '{path}': {e}") from e
        return cls.from_dict(data, source=str(path))


def _validate(c: TrainConfig) -> None:
    if not c.bottlenecks or any(len(row) != 4 or min(row) < 1 for row in c.bottlenecks):
        raise ModelSpecError(
            f"bottlenecks must be a non-empty list of (t, c, n, s) rows of positive ints, got {c.bottlenecks}"
        )
    stride = c.total_stride
    for field_name in ("input_height", "input_width"):
        size = getattr(c, field_name)
        if not isinstance(size, int) or size < stride or size % stride:
            raise ModelSpecError(
                f"{field_name}={size!r} does not give a whole GDC map: it must be a positive multiple of "
                f"the backbone's total stride {stride} (e.g. 112x96 or 112x112)"
            )
    positive = ("embedding_size", "stem_channels", "expand_channels", "batch_size", "epochs", "val_pairs")
    for field_name in positive:
        value = getattr(c, field_name)
        if not isinstance(value, int) or value < 1:
            raise ModelSpecError(f"{field_name} must be a positive integer, got {value!r}")
    if not 0.0 <= c.arcface_margin < math.pi / 2:
        raise ModelSpecError(f"arcface_margin must be in [0, pi/2) radians, got {c.arcface_margin!r}")
    if c.arcface_scale <= 0 or c.learning_rate <= 0:
        raise ModelSpecError(
            f"arcface_scale and learning_rate must be > 0, got {c.arcface_scale!r} and {c.learning_rate!r}"
        )
    if min(c.weight_decay, c.head_weight_decay) < 0 or not 0.0 <= c.momentum < 1.0:
        raise ModelSpecError("weight decays must be >= 0 and momentum in [0, 1)")
    if not 0.0 <= c.val_fraction < 1.0:
        raise ModelSpecError(f"val_fraction must be in [0, 1), got {c.val_fraction!r}")
    _validate_schedule(c)
    if bool(c.val_pair_file) != bool(c.val_image_root):
        raise ModelSpecError("val_pair_file and val_image_root go together: pass --val-pairs FILE with --val-root DIR")


def _validate_schedule(c: TrainConfig) -> None:
    choices = {"lr_schedule": LR_SCHEDULES, "checkpoint_unit": CHECKPOINT_UNITS, "mixed_precision": PRECISIONS}
    for field_name, allowed in choices.items():
        if getattr(c, field_name) not in allowed:
            raise ModelSpecError(f"{field_name} must be one of {', '.join(allowed)}, got {getattr(c, field_name)!r}")
    if any(b < 1 for b in c.lr_steps) or list(c.lr_steps) != sorted(set(c.lr_steps)):
        raise ModelSpecError(f"lr_steps must be increasing epoch numbers >= 1 (e.g. 8,14), got {list(c.lr_steps)}")
    if c.lr_schedule == "step" and not c.lr_steps:
        raise ModelSpecError("lr_schedule 'step' needs lr_steps, the epochs at which the rate drops "
                             "(e.g. --lr-steps 8,14)")
    if not 0.0 < c.lr_factor < 1.0:
        raise ModelSpecError(f"lr_factor must be in (0, 1), got {c.lr_factor!r}")
    if not isinstance(c.checkpoint_every, int) or c.checkpoint_every < 1 or c.keep_checkpoints < 0:
        raise ModelSpecError(f"checkpoint_every must be >= 1 and keep_checkpoints >= 0 (0 keeps all), got "
                             f"{c.checkpoint_every!r} and {c.keep_checkpoints!r}")


PRESETS: dict[str, TrainConfig] = {
    "mobilefacenet": TrainConfig(),
    "mobilefacenet-112x112": TrainConfig(name="mobilefacenet-112x112", input_width=112),
    # For tests, the demo and CPU smoke runs: ~20k parameters, learns the synthetic faces in seconds.
    "tiny": TrainConfig(
        name="tiny",
        stem_channels=8,
        bottlenecks=TINY_BOTTLENECKS,
        expand_channels=64,
        batch_size=32,
        epochs=6,
        learning_rate=0.1,
        val_fraction=0.2,
        val_pairs=400,
    ),
}


def get_preset(name: str) -> TrainConfig:
    """Return the named preset.

    Raises:
        ModelSpecError: no preset has that name.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelSpecError(f"unknown preset '{name}'; choose one of {sorted(PRESETS)}") from None
