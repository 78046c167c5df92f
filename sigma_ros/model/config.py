"""Sigma model configuration: the handful of numbers that define a variant."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class SigmaConfig:
    """Architecture of a Sigma network.

    ``embed_dim`` is the channel count of encoder stage 0 (stage i has ``embed_dim * 2**i``).
    ``decoder_depths[i]`` is the number of CVSS blocks in the decoder stage at the resolution of encoder stage i
    (the official MambaDecoder's ``depths[0:3]``). State sizes and drop-path rates default to the paper's values.
    """

    embed_dim: int = 96
    depths: tuple[int, int, int, int] = (2, 2, 9, 2)
    decoder_depths: tuple[int, int, int] = (4, 4, 4)
    num_classes: int = 9
    d_state: int = 16  # encoder SS2D
    fusion_d_state: int = 4  # CroMB and ConMB
    decoder_d_state: int = 4  # CVSS decoder blocks
    ssm_ratio: float = 2.0
    drop_path_rate: float = 0.2  # encoder stochastic depth (training only)
    decoder_drop_path_rate: float = 0.1

    def __post_init__(self):
        # Normalise lists (from YAML/JSON) to tuples so configs compare and hash.
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "decoder_depths", tuple(int(d) for d in self.decoder_depths))
        if len(self.depths) != 4 or len(self.decoder_depths) != 3:
            raise ValueError(f"depths needs 4 entries and decoder_depths 3, got {self.depths} / {self.decoder_depths}")
        if min(self.depths) < 1 or min(self.decoder_depths) < 1:
            raise ValueError(f"every stage needs at least one block: {self.depths} / {self.decoder_depths}")
        if self.embed_dim < 30:
            # The decoder's channel attention squeezes C // 30 channels: below 30 it degenerates to a constant.
            raise ValueError(f"embed_dim must be >= 30 (got {self.embed_dim})")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (got {self.num_classes})")

    # Variants of the paper (Table A1) and a micro one for tests, demos and CPU training.
    @classmethod
    def tiny(cls, num_classes: int = 9, **kw) -> "SigmaConfig":
        return cls(embed_dim=96, depths=(2, 2, 9, 2), num_classes=num_classes, drop_path_rate=0.2, **kw)

    @classmethod
    def small(cls, num_classes: int = 9, **kw) -> "SigmaConfig":
        return cls(embed_dim=96, depths=(2, 2, 27, 2), num_classes=num_classes, drop_path_rate=0.3, **kw)

    @classmethod
    def base(cls, num_classes: int = 9, **kw) -> "SigmaConfig":
        return cls(embed_dim=128, depths=(2, 2, 27, 2), num_classes=num_classes, drop_path_rate=0.6, **kw)

    @classmethod
    def micro(cls, num_classes: int = 9, **kw) -> "SigmaConfig":
        kw.setdefault("drop_path_rate", 0.1)
        return cls(embed_dim=32, depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1), num_classes=num_classes, **kw)

    @classmethod
    def from_variant(cls, variant: str, num_classes: int = 9, **kw) -> "SigmaConfig":
        try:
            return VARIANTS[variant](num_classes=num_classes, **kw)
        except KeyError:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}") from None

    @property
    def variant(self) -> str:
        """The preset this config matches ('tiny', ...), or 'custom'."""
        for name, make in VARIANTS.items():
            preset = make(num_classes=self.num_classes)
            if dataclasses.replace(self, drop_path_rate=preset.drop_path_rate) == preset:
                return name
        return "custom"

    @property
    def dims(self) -> tuple[int, int, int, int]:
        return tuple(self.embed_dim * 2**i for i in range(4))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["depths"], d["decoder_depths"] = list(self.depths), list(self.decoder_depths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SigmaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SigmaConfig fields: {sorted(unknown)}")
        return cls(**d)


VARIANTS = {"tiny": SigmaConfig.tiny, "small": SigmaConfig.small, "base": SigmaConfig.base, "micro": SigmaConfig.micro}
