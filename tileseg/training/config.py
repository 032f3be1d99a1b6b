"""Training configuration: frozen, validated value objects."""

from __future__ import annotations

from dataclasses import dataclass, field

from tileseg.choices import (
    ClassWeighting,
    Flips,
    HoldoutSide,
    OutputStride,
    SaveDtype,
    check_choices,
)
from tileseg.errors import ConfigError, ModelError
from tileseg.models.loaded import ARCHITECTURES, canonical_architecture
from tileseg.text import counted

IGNORE_INDEX = 255


@dataclass(frozen=True)
class TrainSource:
    """One image raster with its labels: a label raster on the same grid, or a vector file.

    ``class_attribute`` names the vector field that holds each polygon's class (a class value or
    a class name); it is required for vector labels and ignored for label rasters.
    """

    image: str
    labels: str
    class_attribute: str | None = None
    indexes: tuple[int, ...] | None = None  # image bands to use (1-based); default all

    def __post_init__(self) -> None:
        if self.indexes is not None and (not self.indexes or min(self.indexes) < 1):
            raise ConfigError("indexes takes 1-based band numbers, e.g. indexes 1,2,3",
                              params=("indexes",))


@dataclass(frozen=True)
class Holdout:
    """A spatially separate validation strip: ``fraction`` of each image on one ``side``."""

    side: HoldoutSide = "left"
    fraction: float = 0.25

    def __post_init__(self) -> None:
        check_choices(self, prefix="holdout.")  # side
        if not 0.05 <= self.fraction <= 0.5:
            raise ConfigError(f"holdout fraction {self.fraction} must be within 0.05 and 0.5")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``train`` needs. Validation never uses random pixels of the training area.

    Validation comes from ``val_sources`` when given, otherwise from a :class:`Holdout` strip of
    every training image (random crops never touch it).
    """

    sources: tuple[TrainSource, ...]
    out_dir: str
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...] = ()
    class_values: tuple[int, ...] | None = None  # label value of each class; default 0..n-1
    background_class: int | None = None  # vector labels: class where no polygon is (None: ignore)
    val_sources: tuple[TrainSource, ...] = ()
    holdout: Holdout = field(default_factory=Holdout)
    band_names: tuple[str, ...] = ()
    architecture: str = "DeepLabV3Plus"
    encoder_name: str = "tu-efficientnet_lite0"
    encoder_weights: str | None = None  # None (random), "imagenet", or a .pth state dict path
    encoder_output_stride: OutputStride | None = None
    crop_size: int = 513
    scale_range: tuple[float, float] = (0.5, 2.0)
    flips: Flips = "dihedral"
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 50
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    aux_weight: float = 0.4  # PSPNet auxiliary loss weight
    # rare classes count more in the loss: weight ~ frequency^-0.5 (or ^-1), from training labels
    class_weighting: ClassWeighting = "none"
    device: str = "auto"
    amp: bool = True  # mixed precision, on CUDA only
    seed: int | None = 0
    deterministic: bool = False
    save_dtype: SaveDtype = "float32"
    description: str = ""
    overwrite: bool = False

    def __post_init__(self) -> None:
        try:
            canonical = canonical_architecture(self.architecture)
        except ModelError:  # an option value here, not a broken model file
            canonical = ""
        if canonical not in ARCHITECTURES:  # what train trains; any smp network runs
            raise ConfigError(f"architecture {self.architecture!r}: choose one of "
                              f"{', '.join(ARCHITECTURES)}", params=("architecture",))
        object.__setattr__(self, "architecture", canonical)
        if not self.sources:
            raise ConfigError("give at least one training image with its labels")
        n = len(self.class_names)
        if n < 2:
            raise ConfigError("a segmentation model needs at least two classes (class_names a,b)",
                              params=("class_names",))
        if n >= IGNORE_INDEX:
            raise ConfigError(f"at most {IGNORE_INDEX - 1} classes are supported")
        if self.class_colors and len(self.class_colors) != n:
            raise ConfigError(f"{counted(len(self.class_colors), 'colour')} for "
                              f"{counted(n, 'class')}; give one each")
        if self.class_values is not None:
            if len(self.class_values) != n:
                raise ConfigError(f"{counted(len(self.class_values), 'class value')} for "
                                  f"{counted(n, 'class')}; give one per class")
            if len(set(self.class_values)) != n:
                raise ConfigError("class values must be distinct")
        if self.background_class is not None and not 0 <= self.background_class < n:
            raise ConfigError(f"background class {self.background_class} is not in 0..{n - 1}")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ConfigError(f"scale range {self.scale_range} must satisfy 0 < min <= max")
        if self.crop_size < 32:
            raise ConfigError(f"crop size {self.crop_size} is too small; use 32 or more")
        for name in ("batch_size", "epochs", "steps_per_epoch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.learning_rate <= 0:
            raise ConfigError("learning rate must be positive")
        check_choices(self)  # encoder_output_stride, flips, class_weighting, save_dtype

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def values(self) -> tuple[int, ...]:
        """The label value of each class id."""
        return self.class_values if self.class_values is not None else tuple(
            range(self.num_classes))
