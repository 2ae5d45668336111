"""The "mix" step: sample labelled square patches from a batch of images.

Each patch is labelled with the class of its centre pixel; patches of all
images are pooled together. Each step runs where it is cheap: centres are drawn
where the labels are, without Python loops over pixels or patches (a few
operations on large tensors); the greedy selection among the candidates, a loop
of thousands of operations on tiny tensors over the candidate slots, runs on
the CPU whatever the device (on a GPU it would be bound by kernel launches and
a host sync per slot; only the B×M candidate boxes cross over, and the chosen
ones back); all patches are cropped-and-resized where the images are, with
:func:`torchvision.ops.roi_align` (one call on GPU; on CPU, whose kernel is
single-threaded, the boxes are split over threads).

(About 370 lines: one algorithm — centres drawn under two quota rules, the greedy selection, cropping — whose
parts share their random draws, so that the release's rule and the fraction rule stay comparable.)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torchvision.ops import roi_align

from mnm.utils.rng import uniform_below

__all__ = ["QUOTAS", "PatchBatch", "PatchSampler", "crop_patches", "sample_patches"]

#: how the background share is drawn: ``fraction`` (each candidate on background with probability
#: ``background_fraction``, pairwise overlap filter) or ``release`` (the Caffe release's fixed quota,
#: coverage filter with refill; see :func:`_release_selection`)
QUOTAS = ("fraction", "release")
#: foreground candidates per foreground patch under ``quota="release"`` (the release's 5×)
RELEASE_CANDIDATES = 5


class PatchBatch(NamedTuple):
    """Patches pooled over a batch of images."""

    patches: Tensor  # N×C×S×S
    labels: Tensor  # N, int64: class of the centre pixel
    boxes: Tensor  # N×5, roi_align format [batch_idx, x1, y1, x2, y2] (pixel i spans [i, i+1))
    image_index: Tensor  # N, int64: source image of each patch


def _draw_centres(
    flat_labels: Tensor,
    u_group: Tensor,
    u_pixel: Tensor,
    *,
    ignore_index: int,
    background_class: int | None,
    background_fraction: float,
    class_balanced: bool,
) -> tuple[Tensor, Tensor]:
    """Draw one centre pixel per candidate. Returns (flat pixel index B×M, found B×M).

    A candidate draws a group of pixels (see below) with ``u_group`` and then the pixel of rank
    ``uniform_below(u_pixel, n)`` among the group's ``n`` pixels in raster order; the pixel index is
    0 where the group is empty (found is False there).
    """
    if class_balanced:
        return _draw_centres_class_balanced(flat_labels, u_group, u_pixel, ignore_index=ignore_index)
    # group 0 = background, 1 = other valid pixels. The pixel of rank r (0-based) of a group is the
    # first one at which the group's running count reaches r + 1: a binary search per candidate in
    # cumulative counts instead of sorting all pixels by group.
    valid = flat_labels != ignore_index
    cum_fg = valid.cumsum(1, dtype=torch.int32)
    cum_bg = None
    if background_class is not None and background_class != ignore_index:
        cum_bg = (flat_labels == background_class).cumsum(1, dtype=torch.int32)
        cum_fg -= cum_bg
    n_fg = cum_fg[:, -1]
    n_bg = cum_bg[:, -1] if cum_bg is not None else torch.zeros_like(n_fg)
    counts = torch.stack([n_bg, n_fg], dim=1).long()

    # background with probability background_fraction; fall back to the non-empty group
    chosen = (u_group >= background_fraction).long()
    empty = counts.gather(1, chosen) == 0
    chosen = torch.where(empty, 1 - chosen, chosen)
    n = counts.gather(1, chosen)
    found = n > 0
    rank = (uniform_below(u_pixel, n) + 1).int()
    pixel = torch.searchsorted(cum_fg, rank)
    if cum_bg is not None:
        pixel = torch.where(chosen == 0, torch.searchsorted(cum_bg, rank), pixel)
    return torch.where(found, pixel, 0), found


def _draw_centres_class_balanced(
    flat_labels: Tensor, u_group: Tensor, u_pixel: Tensor, *, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """A class uniformly among those present, then a pixel of it (pixels sorted by class)."""
    b = flat_labels.shape[0]
    valid = flat_labels != ignore_index
    if not bool(valid.any()):
        return torch.zeros_like(u_group, dtype=torch.long), torch.zeros_like(u_group, dtype=torch.bool)
    n_groups = int(flat_labels[valid].max()) + 1
    group = torch.where(valid, flat_labels, n_groups)  # one extra group for ignore
    counts = torch.zeros(b, n_groups + 1, dtype=torch.long, device=group.device)
    counts.scatter_add_(1, group, torch.ones_like(group))
    counts = counts[:, :n_groups]
    starts = counts.cumsum(1) - counts
    sorted_pixels = torch.sort(group, dim=1, stable=True).indices

    present = (counts > 0).long()
    rank = uniform_below(u_group, present.sum(1, keepdim=True))
    chosen = torch.searchsorted(present.cumsum(1), rank + 1).clamp(max=n_groups - 1)
    n = counts.gather(1, chosen)
    position = (starts.gather(1, chosen) + uniform_below(u_pixel, n)).clamp(max=group.shape[1] - 1)
    return sorted_pixels.gather(1, position), n > 0


def _selection_state(boxes: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Empty state of a greedy box selection over B×M×4 ``boxes`` keeping up to ``k`` per image:
    kept boxes B×k×4, count kept B, keep mask B×M, row indices B, slot indices k."""
    b, m, _ = boxes.shape
    device = boxes.device
    return (boxes.new_zeros(b, k, 4), torch.zeros(b, dtype=torch.long, device=device),
            torch.zeros(b, m, dtype=torch.bool, device=device), torch.arange(b, device=device),
            torch.arange(k, device=device))


def _greedy_overlap_filter(boxes: Tensor, found: Tensor, k: int, max_overlap: float) -> Tensor:
    """Keep up to ``k`` candidates per image, greedily in slot order.

    A candidate is rejected when its intersection with an already kept box of the same image
    exceeds ``max_overlap`` times the smaller box's area. ``boxes`` is B×M×4; returns keep B×M.
    """
    b, m, _ = boxes.shape
    kept_boxes, n_kept, keep, rows, slots = _selection_state(boxes, k)
    for j in range(m):
        cand = boxes[:, j]
        lo = torch.maximum(kept_boxes[..., :2], cand[:, None, :2])
        hi = torch.minimum(kept_boxes[..., 2:], cand[:, None, 2:])
        inter = (hi - lo).clamp(min=0).prod(-1)
        area = (kept_boxes[..., 2:] - kept_boxes[..., :2]).prod(-1)
        cand_area = (cand[:, 2:] - cand[:, :2]).prod(-1, keepdim=True)
        clash = ((inter > max_overlap * torch.minimum(area, cand_area)) & (slots < n_kept[:, None])).any(1)
        ok = found[:, j] & ~clash & (n_kept < k)
        slot = n_kept.clamp(max=k - 1)
        kept_boxes[rows, slot] = torch.where(ok[:, None], cand, kept_boxes[rows, slot])
        n_kept += ok
        keep[:, j] = ok
        if j % 8 == 7 and bool((n_kept == k).all()):
            break
    return keep


def _union_area(kept: Tensor, valid: Tensor, window: Tensor) -> Tensor:
    """Area of the union of the ``kept`` boxes (B×K×4, ``valid`` B×K) inside ``window`` (B×4).

    Exact, by coordinate compression: the window is cut along every box edge into cells, and a
    cell counts when one valid box contains its centre.
    """
    lo, hi = window[:, None, :2], window[:, None, 2:]
    clipped = torch.cat([kept[..., :2].clamp(lo, hi), kept[..., 2:].clamp(lo, hi)], dim=-1)
    clipped = torch.where(valid[..., None], clipped, window[:, None, :2].repeat(1, 1, 2))  # empty box
    xs = torch.cat([window[:, 0::2], clipped[..., 0::2].flatten(1)], 1).sort(1).values  # B×(2K+2)
    ys = torch.cat([window[:, 1::2], clipped[..., 1::2].flatten(1)], 1).sort(1).values
    mx, my = (xs[:, 1:] + xs[:, :-1]) / 2, (ys[:, 1:] + ys[:, :-1]) / 2
    in_x = (clipped[:, :, None, 0] <= mx[:, None]) & (mx[:, None] < clipped[:, :, None, 2])  # B×K×X
    in_y = (clipped[:, :, None, 1] <= my[:, None]) & (my[:, None] < clipped[:, :, None, 3])  # B×K×Y
    covered = (in_y[:, :, :, None] & in_x[:, :, None, :]).any(1)  # B×Y×X
    cell = (ys[:, 1:] - ys[:, :-1])[:, :, None] * (xs[:, 1:] - xs[:, :-1])[:, None, :]
    return (cell * covered).sum((1, 2))


def _release_selection(boxes: Tensor, found: Tensor, k: int, max_coverage: float, hw: tuple[int, int]) -> Tensor:
    """The release's foreground de-duplication with refill; returns the selection B×M.

    Candidates are visited in slot order; one is kept when the union of the boxes kept so far
    covers at most ``max_coverage`` of its area (coverage counted inside the image). The first
    ``k`` kept ones are taken, and if fewer than ``k`` were kept, rejected candidates refill the
    quota in slot order, so an image with at least ``k`` found candidates gives exactly ``k``.
    """
    b, m, _ = boxes.shape
    image = boxes.new_tensor([0.0, 0.0, hw[1], hw[0]]).expand(b, 4)
    kept_boxes, n_kept, keep, rows, slots = _selection_state(boxes, k)
    for j in range(m):
        cand = boxes[:, j]
        window = torch.cat([torch.maximum(cand[:, :2], image[:, :2]), torch.minimum(cand[:, 2:], image[:, 2:])], 1)
        window = torch.cat([window[:, :2], torch.maximum(window[:, 2:], window[:, :2])], 1)
        covered = _union_area(kept_boxes, slots < n_kept[:, None], window)
        area = (cand[:, 2:] - cand[:, :2]).prod(-1)
        ok = found[:, j] & (covered <= max_coverage * area) & (n_kept < k)
        slot = n_kept.clamp(max=k - 1)
        kept_boxes[rows, slot] = torch.where(ok[:, None], cand, kept_boxes[rows, slot])
        n_kept += ok
        keep[:, j] = ok
        if bool((n_kept == k).all()):
            break
    order = torch.arange(m, device=boxes.device).expand(b, m)
    priority = torch.where(keep, order, order + m).masked_fill(~found, 2 * m)  # kept, then rejected
    rank = priority.argsort(1).argsort(1)
    return found & (rank < k)


MIN_BOXES_PER_THREAD = 16
"""On CPU, :func:`crop_patches` splits the boxes over threads only if each gets at least this many."""


def crop_patches(images: Tensor, rois: Tensor, out_size: int, *, sampling_ratio: int = 1) -> Tensor:
    """Crop-and-resize ``rois`` (K×5, roi_align format) of ``images`` to K×C×``out_size``².

    Equal to one aligned :func:`torchvision.ops.roi_align` call. ``sampling_ratio=1`` takes one
    bilinear sample at the centre of each output pixel (a plain bilinear resize, like OpenCV's
    ``INTER_LINEAR``); ``-1`` averages roi_align's adaptive ``ceil(side / out_size)``² samples per
    output pixel (smoother downscaling; for sides uniform in 64-256 px at 128, 2.5 samples per
    output pixel on average). torchvision's CPU kernel is single-threaded, so on CPU the boxes are
    cut into up to ``torch.get_num_threads()`` chunks of at least :data:`MIN_BOXES_PER_THREAD` boxes, cropped in a thread pool (the kernel
    releases the GIL; each box is computed independently) and concatenated.
    """

    def crop(chunk: Tensor) -> Tensor:
        return roi_align(
            images,
            chunk,
            output_size=out_size,
            spatial_scale=1.0,
            sampling_ratio=sampling_ratio,
            aligned=True,
        )

    n_chunks = min(torch.get_num_threads(), rois.shape[0] // MIN_BOXES_PER_THREAD)
    if images.device.type != "cpu" or n_chunks < 2:
        return crop(rois)
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def crop_in_worker(chunk: Tensor) -> Tensor:  # grad and inference mode are thread-local
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return crop(chunk)

    chunks = rois.tensor_split(n_chunks)
    with ThreadPoolExecutor(max_workers=n_chunks - 1) as pool:
        rest = pool.map(crop_in_worker, chunks[1:])  # submitted now, collected below
        first = crop(chunks[0])  # in this thread, while the pool works on the others
        return torch.cat([first, *rest])


def sample_patches(
    images: Tensor,
    labels: Tensor,
    *,
    patches_per_image: int = 9,
    size_range: tuple[int, int] = (64, 256),
    out_size: int = 128,
    background_class: int | None = 0,
    background_fraction: float = 0.1,
    class_balanced: bool = False,
    max_overlap: float = 0.6,
    ignore_index: int = 255,
    candidates_per_image: int | None = None,
    antialias: bool = False,
    quota: Literal["fraction", "release"] = "fraction",
    fill: tuple[float, ...] | None = None,
    generator: torch.Generator | None = None,
) -> PatchBatch:
    """Sample up to ``patches_per_image`` labelled square patches per image and pool them.

    ``images`` is B×C×H×W float, ``labels`` B×H×W int64. Each candidate gets a centre pixel
    (never ``ignore_index``; about ``background_fraction`` of them on ``background_class`` and the
    rest on other classes when both exist, or, with ``class_balanced``, a class drawn uniformly among
    those present and then a pixel of it) and an integer side uniform in ``size_range`` (clamped to
    ``min(H, W)``). The box is centred on the centre pixel; parts outside the image are zero-filled.
    ``candidates_per_image`` candidates (default ``4 * patches_per_image``) are screened greedily by
    the overlap rule (see :func:`_greedy_overlap_filter`), so an image may yield fewer patches; an
    image without valid pixels yields none. Patches are resized bilinearly, with ``antialias``
    averaging several samples per output pixel (see :func:`crop_patches`). Random numbers are
    drawn on CPU from ``generator`` (a CPU generator, or torch's default one), so results are
    reproducible on any device; the selection runs on the CPU (see the module docstring), and every
    tensor returned is on the images' device.

    ``quota="release"`` follows the Caffe release (``create_patch.py``): each image gets exactly
    ``max(1, floor(background_fraction * k))`` centres on ``background_class`` (no overlap filter)
    and the rest on other valid pixels, chosen among ``5×`` as many candidates by
    :func:`_release_selection` (``max_overlap`` is the coverage bound); sides are forced even, and
    ``candidates_per_image`` is unused. Either group falls back to the other when empty, so an
    image with any valid pixel gives ``k`` patches. ``fill`` (one value per channel) fills what lies
    past the image border instead of zeros (the release: the mean colour).
    """
    if images.ndim != 4 or labels.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"expected images B×C×H×W and labels B×H×W, got {tuple(images.shape)}, {tuple(labels.shape)}"
        )
    lo, hi = size_range
    if not 0 < lo <= hi:
        raise ValueError(f"size_range must satisfy 0 < low <= high, got {size_range}")
    b, _, h, w = images.shape
    if quota not in QUOTAS:
        raise ValueError(f"quota must be one of {QUOTAS}, got {quota!r}")
    k = patches_per_image
    release = quota == "release"
    n_bg = min(k, max(1, int(background_fraction * k))) if release and background_class is not None else 0
    if release:
        m_fg = RELEASE_CANDIDATES * (k - n_bg)
        m = m_fg + n_bg
    else:
        m = candidates_per_image if candidates_per_image is not None else 4 * k
    device = images.device

    u = torch.rand(3, b, m, generator=generator, dtype=torch.float64).to(device)
    if release:  # the first m_fg candidates on foreground, the rest on background
        u[0] = (torch.arange(m, device=device) < m_fg).to(u.dtype)
    flat = labels.reshape(b, h * w).long()
    pixel, found = _draw_centres(
        flat,
        u[0],
        u[1],
        ignore_index=ignore_index,
        background_class=background_class,
        background_fraction=0.5 if release else background_fraction,
        class_balanced=class_balanced,
    )
    side = lo + (u[2] * (hi - lo + 1)).floor()
    if release:
        side = (side / 2).floor() * 2
    side = side.clamp(max=min(h, w)).to(images.dtype)
    cy, cx = (pixel // w).to(images.dtype) + 0.5, (pixel % w).to(images.dtype) + 0.5
    half = side / 2
    boxes = torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1)  # B×M×4
    boxes, found = boxes.cpu(), found.cpu()  # the selection runs on the CPU (see the module docstring)
    if k == 0 or m == 0:
        keep = torch.zeros(b, m, dtype=torch.bool)
    elif release:
        fg = _release_selection(boxes[:, :m_fg], found[:, :m_fg], k - n_bg, max_overlap, (h, w))
        keep = torch.cat([fg, found[:, m_fg:]], dim=1)
    else:
        keep = _greedy_overlap_filter(boxes, found, k, max_overlap)

    image_index, slot = keep.nonzero(as_tuple=True)
    rois = torch.cat([image_index[:, None].to(images.dtype), boxes[image_index, slot]], dim=1).to(device)
    image_index, slot = image_index.to(device), slot.to(device)
    sampling_ratio = -1 if antialias else 1
    if fill is None:
        patches = crop_patches(images, rois, out_size, sampling_ratio=sampling_ratio)
    else:  # roi_align reads zeros past the border: crop the image minus fill, add fill back
        shift = torch.as_tensor(fill, dtype=images.dtype, device=device).view(1, -1, 1, 1)
        patches = crop_patches(images - shift, rois, out_size, sampling_ratio=sampling_ratio) + shift
    return PatchBatch(patches, flat[image_index, pixel[image_index, slot]], rois, image_index)


@dataclass(frozen=True)
class PatchSampler:
    """The settings of :func:`sample_patches`, built once (by the M&M stage) and reused.

    ``sample(images, labels, generator)`` is ``sample_patches`` with these settings.
    """

    patches_per_image: int = 9
    size_range: tuple[int, int] = (64, 256)
    out_size: int = 128
    background_class: int | None = 0
    background_fraction: float = 0.1
    class_balanced: bool = False
    max_overlap: float = 0.6
    ignore_index: int = 255
    candidates_per_image: int | None = None
    antialias: bool = False
    quota: Literal["fraction", "release"] = "fraction"
    fill: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.quota not in QUOTAS:
            raise ValueError(f"quota must be one of {QUOTAS}, got {self.quota!r}")

    def sample(self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> PatchBatch:
        """Sample, crop and resize the patches of one image batch (see :func:`sample_patches`)."""
        return sample_patches(images, labels, generator=generator, **asdict(self))
