"""Findings in words from the per-sample statistics: noisy layers, the noise scale, samples
pulling against the batch."""

from collections.abc import Sequence

from service.schemas.reports import ParameterPerSample, PerSampleReport

# A median GSNR below this: most elements' signal is under a third of their noise (√0.1).
NOISY_GSNR = 0.1


def ranges(indices: Sequence[int]) -> str:
    """0, 1, 2, 3, 5 -> "0–3, 5"."""
    spans: list[list[int]] = []
    for index in indices:
        if spans and index == spans[-1][1] + 1:
            spans[-1][1] = index
        else:
            spans.append([index, index])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in spans)


def noisy_layers(
    parameters: Sequence[ParameterPerSample], owners: Sequence[str | None], layers: Sequence[str]
) -> list[int]:
    """The reported layers each of whose parameter tensors (with a GSNR) has a median GSNR
    below NOISY_GSNR."""
    medians: dict[str, list[float]] = {name: [] for name in layers}
    for entry, owner in zip(parameters, owners, strict=True):
        if owner is not None and entry["gsnr_median"] is not None:
            medians[owner].append(entry["gsnr_median"])
    return [i for i, name in enumerate(layers) if medians[name] and max(medians[name]) < NOISY_GSNR]


def findings(report: PerSampleReport, noisy: Sequence[int]) -> list[str]:
    said = []
    if noisy:
        which = "layer" if len(noisy) == 1 else "layers"
        said.append(
            f"signal below noise in {which} {ranges(noisy)} (median GSNR < {NOISY_GSNR:g} in "
            "each of their parameters)"
        )
    noise, batch = report["noise"], report["batch_size"]
    b_simple = noise["b_simple"]
    if b_simple is None and noise["grad_sq_norm"] is not None:
        said.append(
            "the batch gradient is within its noise (|G|² estimate ≤ 0): the noise scale "
            "B_simple is undefined; a larger batch would tell signal from noise"
        )
    elif b_simple is not None:
        relation = "above" if b_simple > batch else "within"
        said.append(
            f"gradient noise scale B_simple ≈ {b_simple:.3g}, {relation} the batch of {batch}"
        )
    fraction = report["alignment"]["negative_fraction"]
    if fraction:
        against = round(fraction * batch)
        said.append(f"{against} of {batch} samples pull against the batch gradient (cos < 0)")
    return said
