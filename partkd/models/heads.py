"""What a student adds to its backbone: the projection of its features to the teacher's width (paper Sec. 3.3)."""

from __future__ import annotations

from torch import Tensor, nn

from partkd.models.registry import ModelOutput


class ProjectionHead(nn.Module):
    """Maps student features ``(..., C_student)`` to the teacher's width ``(..., C_teacher)``: part features
    ``(B, P, C)`` or global ones ``(B, C)``.

    One linear map shared by all parts (a part keeps its meaning across the map); the identity when the widths agree,
    so the paper's setting (same backbone on both sides) adds no parameters.
    """

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        same = student_channels == teacher_channels
        self.proj = nn.Identity() if same else nn.Linear(student_channels, teacher_channels, bias=False)

    def forward(self, student_feats: Tensor) -> Tensor:
        return self.proj(student_feats)  # (..., C_teacher)


class Student(nn.Module):
    """A student backbone and its projection to the teacher's width, trained and checkpointed together.

    The forward is the backbone's; the distillation objective applies ``projection`` to the representation it
    compares (part or global features).
    """

    def __init__(self, backbone: nn.Module, teacher_channels: int):
        super().__init__()
        self.backbone = backbone
        self.projection = ProjectionHead(backbone.out_channels, teacher_channels)

    @property
    def out_channels(self) -> int:
        return self.backbone.out_channels

    def forward(self, x: Tensor) -> ModelOutput:
        return self.backbone(x)
