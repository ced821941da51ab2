"""How much more an inference stage costs per image than a training step, and a one-line note
when it is far more (a multi-scale, flipped pass at a larger size than training can be 10-20×)."""

from __future__ import annotations

from typing import Optional, Sequence

#: A stage whose pixels per image exceed training's by more than this gets a note. 16: the shipped
#: recipes stay below it (CAM's 4 scales + flip at the training size: 15×; TKP-PCL's 960 px after
#: 384 px training: 6.25×); the same recipes after training at a smaller size do not.
NOTE_ABOVE = 16.0


def pixel_ratio(train_size: int, infer_size: int, scales: Sequence[float], flip: bool) -> float:
    """Pixels one image costs at inference (every scale, ×2 with flip, square ``infer_size`` at
    scale 1) over the pixels of one square ``train_size`` training input."""
    per_view = sum((s * infer_size) ** 2 for s in scales) / float(train_size) ** 2
    return per_view * (2 if flip else 1)


def cost_note(stage: str, train_size: int, infer_size: int, scales: Sequence[float], flip: bool,
              keys: str = "pseudo", above: float = NOTE_ABOVE) -> Optional[str]:
    """The note for ``stage`` when :func:`pixel_ratio` exceeds ``above``, else None."""
    ratio = pixel_ratio(train_size, infer_size, scales, flip)
    if ratio <= above:
        return None
    views = f"{len(scales)} scale{'s' if len(scales) > 1 else ''} ({', '.join(f'{s:g}' for s in scales)})"
    largest = max(scales) * infer_size
    return (f"note: {stage} runs each image at {infer_size} px × {views}{' + flip' if flip else ''} "
            f"(largest {largest:.0f} px, {largest / train_size:.1f}× the training size {train_size} px): "
            f"{ratio:.0f}× the pixels of a training image; {keys}.image_size, {keys}.scales and "
            f"{keys}.flip lower it")


def print_cost_note(stage: str, cfg) -> None:
    """One line on stderr when ``stage`` (run with ``cfg.pseudo``'s inference settings) costs far
    more per image than a training step of ``cfg`` (an ExperimentConfig)."""
    import sys

    note = cost_note(stage, cfg.data.image_size, cfg.pseudo.image_size, cfg.pseudo.scales, cfg.pseudo.flip)
    if note:
        print(note, file=sys.stderr)
