"""Regional semantic contrast and aggregation (RCA), an add-on for the CAM family.

Pieces (§4 of the method specification):

* :func:`region_embeddings` - one embedding per (image, present class): the masked
  average of the features over ``M = 1[P > mean(P)]``.
* :class:`RegionMemoryBank` - per class a bank of region embeddings, one slot per
  image region, updated with momentum when the same image's region is seen again.
* :func:`region_mixup_loss` - InfoNCE of mixed regions against the bank (L_RM).
* :func:`kmeans` and :class:`RCAAggregation` - per-class prototypes Q from the bank,
  ``S = softmax(F Q^T)``, ``F' = S Q``, ``F^ = [F, F']`` and a second CAM head on F^.
* :func:`rca_total_loss` - ``L_CE(GAP(O)) + 0.4 L_CE(GAP(P)) + 0.01 L_RM`` (contrast
  off before ``contrast_start_epoch``).

Index convention: RCA works with *channel* indices of the score maps. With
foreground-only maps (``has_background=False``, C = K-1) channel c is class c+1;
with maps including background (C = K) channel c is class c.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tagseg.addons.registry import (
    AUX_CAM_HEAD, FEATURES, FORMULATIONS, SCORE_MAPS, WHOLE_CLASS_LOSS, Addon, BuildContext, LossContext, register_addon,
)
from tagseg.errors import ConfigError, TagsegError
from tagseg.addons.hfpl import channel_targets

RM_REDUCTIONS = ("sum_images", "mean")  # addons.rca.rm_reduction: region_mixup_loss


@dataclass(frozen=True)
class RCAConfig:
    """The ``addons.rca`` section: switch and hyper-parameters (defaults from §4; ``mixup_alpha``
    is the Beta(a, a) parameter).

    On a family that takes an add-on CAM head (CAM family): memory bank, region mixup contrast,
    k-means prototypes and the aggregation head. Otherwise (patch family): the region contrast on
    the family's features only.
    ``contrast_start_epoch`` is 0-based: the default 2 switches L_RM off in the first two epochs, as the
    official code does (maeve07/RCA ``train.py:101``); the paper's "off in the first epoch" is 1.
    """

    enabled: bool = False
    capacity: int = 500  # regions per class in the memory bank
    momentum: float = 0.99  # γ
    score_threshold: float = 0.7  # ν
    temperature: float = 0.07
    mixup_alpha: float = 8.0  # ω ~ Beta(a, a)
    prototypes_per_class: int = 10
    kmeans_iters: int = 50
    aux_weight: float = 0.4  # weight of L_CE(GAP(P)), P the intermediate (base) CAM; O (aggregated) has 1
    contrast_weight: float = 0.01  # L_RM
    contrast_start_epoch: int = 2  # 0-based; official train.py:101 (the paper: 1, off in the first epoch only)
    # Where the official code (maeve07/RCA models/rca.py) and tagseg agree with Eq. 11 but tagseg
    # differed, the code is followed (defaults); the old behaviour stays reachable:
    rm_reduction: str = "sum_images"  # L_RM summed over images, mean over each image's regions; "mean": over all
    region_mask: str = "softmax"  # M = 1[softmax_c(P)_c > its mean]; "raw": 1[P_c > mean(P_c)]
    bank_gate: str = "aggregated"  # regions enter the bank when sigmoid(GAP(O)) > ν; "base": GAP(P)
    # Where the code departs from the paper, the paper stays the default and the code is a key:
    bank_update: str = "paper"  # per-image slots, momentum on revisit; "official": noise-initialised FIFO ring
    aggregation: str = "paper"  # S = softmax(F Q^T), F' = S Q; "official": learned key/value attention, no softmax

    def __post_init__(self) -> None:
        if self.capacity <= 0:
            raise ConfigError(f"addons.rca.capacity={self.capacity}: the memory bank needs room for at least "
                              "1 region per class")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"addons.rca.momentum={self.momentum}: must be in [0, 1)")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"addons.rca.score_threshold={self.score_threshold}: must be in [0, 1]")
        for name in ("temperature", "mixup_alpha"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"addons.rca.{name}={getattr(self, name)}: must be > 0")
        for name in ("prototypes_per_class", "kmeans_iters"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"addons.rca.{name}={getattr(self, name)}: must be > 0")
        for name in ("aux_weight", "contrast_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"addons.rca.{name}={getattr(self, name)}: must be >= 0")
        if self.contrast_start_epoch < 0:
            raise ConfigError(f"addons.rca.contrast_start_epoch={self.contrast_start_epoch}: must be >= 0")
        for name, allowed in (("rm_reduction", RM_REDUCTIONS), ("region_mask", ("softmax", "raw")),
                              ("bank_gate", ("aggregated", "base")), ("bank_update", FORMULATIONS),
                              ("aggregation", FORMULATIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"addons.rca.{name}={getattr(self, name)!r}: choose {' or '.join(allowed)}")


@dataclass(frozen=True)
class RegionBatch:
    """Region embeddings of a batch: ``embeddings`` (N, D), ``channels`` (N,), ``batch_index`` (N,)."""

    embeddings: Tensor
    channels: Tensor
    batch_index: Tensor


def region_masks(cams: Tensor, mode: str = "raw") -> Tensor:
    """M = 1[P > mean(P)] per image and channel, (B, C, h, w) float; an empty mask becomes all ones.

    ``mode="softmax"``: P is first replaced by its softmax over the channels, as the official code."""
    if mode == "softmax":
        cams = torch.softmax(cams.detach(), dim=1)
    elif mode != "raw":
        raise ConfigError(f"region mask mode {mode!r}: choose softmax or raw")
    mask = (cams > cams.mean(dim=(2, 3), keepdim=True)).to(cams.dtype)
    empty = mask.sum(dim=(2, 3), keepdim=True) == 0
    return torch.where(empty, torch.ones_like(mask), mask).detach()


def region_embeddings(features: Tensor, cams: Tensor, labels: Tensor, *, has_background: bool = False,
                      mask_mode: str = "raw") -> RegionBatch:
    """Masked average of ``features`` (B, D, h, w) over each present class's region of ``cams`` (B, C, h, w).

    Rows are ordered by image, then channel. Gradient flows into ``features`` (the masks are constants).
    """
    targets = channel_targets(cams, labels, has_background)
    if features.dim() != 4 or features.shape[0] != cams.shape[0] or features.shape[2:] != cams.shape[2:]:
        raise TagsegError(
            f"features {tuple(features.shape)} and CAMs {tuple(cams.shape)} must share batch and spatial size"
        )
    mask = region_masks(cams, mask_mode).to(features.dtype)
    pooled = torch.einsum("bdhw,bchw->bcd", features, mask) / mask.sum(dim=(2, 3))[:, :, None]
    batch_index, channels = (targets > 0).nonzero(as_tuple=True)
    return RegionBatch(pooled[batch_index, channels], channels, batch_index)


class RegionMemoryBank(nn.Module):
    """Per-class banks of region embeddings, stored in buffers (saved with ``state_dict``).

    One slot per (class, image id). ``update`` writes a region only when its score
    exceeds ``score_threshold``: if the bank already holds that image's region it is
    updated in place, ``m <- momentum * m + (1 - momentum) * f``; otherwise the region
    is appended, and when the class already holds ``capacity`` regions the oldest
    *inserted* one is evicted (FIFO; momentum updates do not refresh a slot's age).
    Image ids are non-negative integers (e.g. dataset indices). Stored values are detached.

    ``update_mode="official"`` is the official code's bank instead (a departure from the paper):
    every slot starts as N(0, 1) noise (drawn from ``init_seed``) and counts as an entry; each
    written region blends into the class's next slot of a ring, ``m <- momentum * m +
    (1 - momentum) * f``, whatever its image.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        capacity: int = 500,
        momentum: float = 0.99,
        score_threshold: float = 0.7,
        update_mode: str = "paper",
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        if update_mode not in FORMULATIONS:
            raise ConfigError(f"memory bank update mode {update_mode!r}: choose paper or official")
        self.update_mode = update_mode
        self.init_seed = init_seed
        if num_classes <= 0 or dim <= 0:
            raise ConfigError(f"RegionMemoryBank needs num_classes > 0 and dim > 0, got {num_classes}, {dim}")
        RCAConfig(capacity=capacity, momentum=momentum, score_threshold=score_threshold)  # validates
        self.num_classes = num_classes
        self.dim = dim
        self.capacity = capacity
        self.momentum = momentum
        self.score_threshold = score_threshold
        self.register_buffer("memory", torch.zeros(num_classes, capacity, dim))
        self.register_buffer("keys", torch.full((num_classes, capacity), -1, dtype=torch.long))
        self.register_buffer("sizes", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("heads", torch.zeros(num_classes, dtype=torch.long))
        if update_mode == "official":
            self._fill_noise()

    @torch.no_grad()
    def _fill_noise(self) -> None:
        """Official bank: every slot N(0, 1) noise and counted as an entry."""
        g = torch.Generator().manual_seed(self.init_seed)
        noise = torch.randn(self.memory.shape, generator=g, dtype=torch.float32)
        self.memory.copy_(noise.to(self.memory.dtype))
        self.sizes.fill_(self.memory.shape[1])

    @torch.no_grad()
    def update(self, embeddings: Tensor, channels: Tensor, image_ids: Tensor, scores: Tensor) -> int:
        """Add / momentum-update regions (N, D) of ``channels`` (N,) from ``image_ids`` (N,) with ``scores`` (N,).

        Returns the number of regions written (appended or updated).
        """
        n = embeddings.shape[0]
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise TagsegError(f"memory bank expects (N, {self.dim}) embeddings, got {tuple(embeddings.shape)}")
        if not (channels.shape[0] == image_ids.shape[0] == scores.shape[0] == n):
            raise TagsegError(
                f"memory bank update: {n} embeddings but {channels.shape[0]} channels, "
                f"{image_ids.shape[0]} image ids, {scores.shape[0]} scores"
            )
        if self.released:
            self._allocate(self.capacity)
            if self.update_mode == "official":
                self._fill_noise()
        written = 0
        emb = embeddings.detach().to(self.memory.dtype)
        for f, c, key, s in zip(emb, channels.tolist(), image_ids.tolist(), scores.tolist()):
            if not 0 <= c < self.num_classes:
                raise TagsegError(f"memory bank has {self.num_classes} classes, got channel {c}")
            if key < 0:
                raise TagsegError(f"image ids must be non-negative integers, got {key}")
            if not s > self.score_threshold:
                continue
            if self.update_mode == "official":
                slot = int(self.heads[c])
                self.memory[c, slot] = self.momentum * self.memory[c, slot] + (1.0 - self.momentum) * f
                self.heads[c] = (slot + 1) % self.capacity
                written += 1
                continue
            size = int(self.sizes[c])
            hit = (self.keys[c, :size] == key).nonzero(as_tuple=True)[0]
            if hit.numel() > 0:
                slot = int(hit[0])
                self.memory[c, slot] = self.momentum * self.memory[c, slot] + (1.0 - self.momentum) * f
            else:
                slot = int(self.heads[c])
                self.memory[c, slot] = f
                self.keys[c, slot] = key
                self.heads[c] = (slot + 1) % self.capacity
                self.sizes[c] = min(size + 1, self.capacity)
            written += 1
        return written

    @property
    def released(self) -> bool:
        """True after :meth:`release`: the bank holds no storage (an update starts it again, empty)."""
        return self.memory.shape[1] == 0

    def _allocate(self, slots: int) -> None:
        """Replace the storage by ``slots`` empty slots per class (sizes and heads reset)."""
        dev = self.sizes.device
        self.memory = torch.zeros(self.num_classes, slots, self.dim, dtype=self.memory.dtype, device=dev)
        self.keys = torch.full((self.num_classes, slots), -1, dtype=torch.long, device=dev)
        self.sizes.zero_()
        self.heads.zero_()

    @torch.no_grad()
    def release(self) -> None:
        """Free the stored regions once training is over (inference needs only the prototypes).

        The buffers shrink to zero slots, so a state dict saved afterwards carries no regions.
        """
        self._allocate(0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Loading a released bank (zero slots) releases this one; a full bank loads into full storage."""
        incoming = state_dict.get(prefix + "memory")
        if incoming is not None and incoming.dim() == 3:
            slots = incoming.shape[1]
            if slots not in (0, self.capacity):
                error_msgs.append(f"{prefix}memory: {slots} slots per class in the state dict, "
                                  f"the bank has capacity {self.capacity}")
                return
            if self.memory.shape[1] != slots:
                self._allocate(slots)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def entries(self, channel: int) -> Tensor:
        """The stored regions of one class, (size_c, D), in slot order."""
        return self.memory[channel, : int(self.sizes[channel])]

    def all_entries(self) -> tuple[Tensor, Tensor]:
        """All stored regions (M, D) and their channels (M,)."""
        valid = torch.arange(self.memory.shape[1], device=self.sizes.device)[None, :] < self.sizes[:, None]
        channels = torch.arange(self.num_classes, device=self.sizes.device)[:, None].expand_as(valid)
        return self.memory[valid], channels[valid]


def region_nce(queries: Tensor, classes: Tensor, memory: Tensor, memory_classes: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """InfoNCE of queries (N, D) against a memory (M, D) under cosine similarity / temperature.

    For query q of class l: mean over the memory entries m+ of class l of
    ``-log(exp(s(q, m+)) / (exp(s(q, m+)) + sum_{m- not of class l} exp(s(q, m-))))``.
    The memory is used under stop-gradient. Returns per-query losses (N,) and a (N,)
    bool mask of queries that have at least one positive (others are 0).
    """
    if not temperature > 0:
        raise ConfigError(f"region_nce temperature must be > 0, got {temperature}")
    q = F.normalize(queries, dim=1, eps=1e-12)
    mem = F.normalize(memory.detach().to(q.dtype), dim=1, eps=1e-12)
    sims = q @ mem.t() / temperature  # (N, M)
    pos = classes[:, None] == memory_classes[None, :]
    neg_lse = torch.logsumexp(sims.masked_fill(pos, float("-inf")), dim=1, keepdim=True)
    terms = torch.logaddexp(sims, neg_lse) - sims
    n_pos = pos.sum(dim=1)
    losses = (terms * pos).sum(dim=1) / n_pos.clamp_min(1)
    return losses, n_pos > 0


def sample_mixup_weights(n: int, alpha: float = 8.0) -> Tensor:
    """omega ~ Beta(alpha, alpha), (n,) (uses torch's global random state)."""
    return torch.distributions.Beta(float(alpha), float(alpha)).sample((n,))


def region_mixup_loss(
    regions: RegionBatch,
    bank: RegionMemoryBank,
    temperature: float = 0.07,
    omega: Tensor | None = None,
    alpha: float = 8.0,
    generator: torch.Generator | None = None,
    *,
    reduction: str = "mean",
    partners: Tensor | None = None,
) -> Tensor:
    """L_RM = mean over regions of omega * NCE(f^, l) + (1 - omega) * NCE(f^, l-).

    f^ = omega f_l + (1 - omega) f_l- mixes each region with a random region of another
    class: from the batch when one exists whose class has entries in the bank, else a
    random bank entry of another class, else no mixing (omega = 1). Regions whose own
    class has no entry in the bank are skipped; 0 when none remains. ``omega`` (N,)
    defaults to Beta(alpha, alpha) draws; ``generator`` drives the partner choice.
    ``partners`` (N,) row indices into ``regions`` fix the partners instead (a region may be its
    own partner, as in the official code). ``reduction``: "mean" over regions, or
    "sum_images": per image the mean over its regions, summed over images (Eq. 11 and the
    official code).
    """
    if reduction not in RM_REDUCTIONS:
        raise ConfigError(f"L_RM reduction {reduction!r}: choose mean or sum_images")
    emb, cls = regions.embeddings, regions.channels
    n = emb.shape[0]
    memory, mem_cls = bank.all_entries()
    if n == 0 or memory.shape[0] == 0:
        return emb.sum() * 0.0
    if omega is None:
        omega = sample_mixup_weights(n, alpha)
    omega = omega.to(emb.device, emb.dtype)
    if omega.shape != (n,):
        raise TagsegError(f"omega must have shape ({n},), got {tuple(omega.shape)}")
    in_bank = torch.zeros(bank.num_classes, dtype=torch.bool, device=cls.device)
    in_bank[mem_cls.to(cls.device)] = True

    partner_list, partner_cls, weights = [], [], []
    for i in range(n):
        li = int(cls[i])
        if partners is not None:
            j = int(partners[i])
            partner_list.append(emb[j])
            partner_cls.append(int(cls[j]))
            weights.append(omega[i])
            continue
        batch_cand = ((cls != li) & in_bank[cls]).nonzero(as_tuple=True)[0]
        mem_cand = (mem_cls != li).nonzero(as_tuple=True)[0]
        if batch_cand.numel() > 0:
            j = batch_cand[torch.randint(batch_cand.numel(), (1,), generator=generator).item()]
            partner_list.append(emb[j])
            partner_cls.append(int(cls[j]))
            weights.append(omega[i])
        elif mem_cand.numel() > 0:
            j = mem_cand[torch.randint(mem_cand.numel(), (1,), generator=generator).item()]
            partner_list.append(memory[j].detach().to(emb.dtype))
            partner_cls.append(int(mem_cls[j]))
            weights.append(omega[i])
        else:
            partner_list.append(torch.zeros_like(emb[i]))
            partner_cls.append(li)
            weights.append(torch.ones((), dtype=emb.dtype, device=emb.device))
    w = torch.stack(weights)
    mixed = w[:, None] * emb + (1.0 - w[:, None]) * torch.stack(partner_list)
    own, own_ok = region_nce(mixed, cls, memory, mem_cls, temperature)
    other_cls = torch.tensor(partner_cls, dtype=cls.dtype, device=cls.device)
    other, _ = region_nce(mixed, other_cls, memory, mem_cls, temperature)
    per_region = w * own + (1.0 - w) * other
    if not own_ok.any():
        return emb.sum() * 0.0
    if reduction == "mean":
        return per_region[own_ok].mean()
    total = emb.sum() * 0.0
    images = regions.batch_index
    for b in torch.unique(images[own_ok]).tolist():
        rows = own_ok & (images == b)
        total = total + per_region[rows].mean()
    return total


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int = 50, seed: int = 0) -> Tensor:
    """Euclidean k-means with k-means++ initialisation seeded by ``seed`` -> centres (min(k, N), D).

    With N <= k every point is its own centre. An emptied cluster keeps its previous centre.
    Deterministic for a given input and seed.
    """
    if x.dim() != 2:
        raise TagsegError(f"kmeans expects (N, D) points, got shape {tuple(x.shape)}")
    if k <= 0 or iters <= 0:
        raise ConfigError(f"kmeans needs k > 0 and iters > 0, got k={k}, iters={iters}")
    n = x.shape[0]
    if n <= k:
        return x.clone()
    pts = x.double()
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [pts[first]]
    closest = ((pts - pts[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = closest.sum()
        if total > 0:
            idx = int(torch.multinomial((closest / total).cpu(), 1, generator=gen))
        else:  # all remaining points coincide with a centre
            idx = int(torch.randint(n, (1,), generator=gen))
        centres.append(pts[idx])
        closest = torch.minimum(closest, ((pts - pts[idx]) ** 2).sum(1))
    c = torch.stack(centres)
    assign = None
    for _ in range(iters):
        new_assign = torch.cdist(pts, c).argmin(dim=1)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        counts = torch.bincount(assign, minlength=k).to(pts.dtype)
        sums = torch.zeros_like(c).index_add_(0, assign, pts)
        nonempty = counts > 0
        c[nonempty] = sums[nonempty] / counts[nonempty, None]
    return c.to(x.dtype)


class RCAAggregation(nn.Module):
    """Prototype aggregation and the second CAM head.

    Buffers ``prototypes`` (C*Kp, D) and ``prototype_valid`` (C*Kp,) are saved with the
    model, so inference needs no memory bank. ``forward(features (B, D, h, w))`` returns
    the second CAM P (B, C, h, w) computed by a 1x1 conv on F^ = [F, S Q], with
    S = softmax(F Q^T) over the valid prototypes (dot product, row-wise). With no valid
    prototype (before the first k-means) F' is zero.

    ``mode="official"`` is the official code's aggregation instead (a departure from the paper):
    F' = aggre((q(F) k(Q)^T) · C / Kp · v(Q)) with learned 1×1 convolutions ``q``, ``aggre`` and
    linear maps ``k``, ``v`` (no softmax), F^ = project([F, F']) (D channels, a learned 1×1
    convolution), and the CAM head on F^. With no valid prototype F' is aggre(0).
    """

    def __init__(self, in_dim: int, num_channels: int, prototypes_per_class: int = 10, mode: str = "paper") -> None:
        super().__init__()
        if mode not in FORMULATIONS:
            raise ConfigError(f"RCA aggregation mode {mode!r}: choose paper or official")
        self.mode = mode
        if in_dim <= 0 or num_channels <= 0 or prototypes_per_class <= 0:
            raise ConfigError(
                "RCAAggregation needs positive sizes, got "
                f"in_dim={in_dim}, num_channels={num_channels}, prototypes_per_class={prototypes_per_class}"
            )
        self.in_dim = in_dim
        self.num_channels = num_channels
        self.prototypes_per_class = prototypes_per_class
        self.register_buffer("prototypes", torch.zeros(num_channels * prototypes_per_class, in_dim))
        self.register_buffer("prototype_valid", torch.zeros(num_channels * prototypes_per_class, dtype=torch.bool))
        if mode == "official":
            self.q = nn.Conv2d(in_dim, in_dim, kernel_size=1)
            self.k = nn.Linear(in_dim, in_dim)
            self.v = nn.Linear(in_dim, in_dim)
            self.aggre = nn.Conv2d(in_dim, in_dim, kernel_size=1)
            self.project = nn.Conv2d(2 * in_dim, in_dim, kernel_size=1)
        self.head = nn.Conv2d(in_dim if mode == "official" else 2 * in_dim, num_channels, kernel_size=1, bias=False)

    @torch.no_grad()
    def update_prototypes(self, bank: RegionMemoryBank, iters: int = 50, seed: int = 0) -> None:
        """Run k-means (Kp per class, seed ``seed + channel``) on every class bank and store the centres."""
        if bank.num_classes != self.num_channels or bank.dim != self.in_dim:
            raise TagsegError(
                f"bank ({bank.num_classes} classes, dim {bank.dim}) does not match the aggregation "
                f"({self.num_channels} channels, dim {self.in_dim})"
            )
        kp = self.prototypes_per_class
        self.prototypes.zero_()
        self.prototype_valid.zero_()
        for c in range(self.num_channels):
            entries = bank.entries(c)
            if entries.shape[0] == 0:
                continue
            centres = kmeans(entries, kp, iters=iters, seed=seed + c)
            self.prototypes[c * kp : c * kp + centres.shape[0]] = centres.to(self.prototypes.dtype)
            self.prototype_valid[c * kp : c * kp + centres.shape[0]] = True

    def aggregate(self, features: Tensor) -> Tensor:
        """F^ = [F, S Q] (B, 2D, h, w) for features (B, D, h, w)."""
        if features.dim() != 4 or features.shape[1] != self.in_dim:
            raise TagsegError(f"RCAAggregation expects (B, {self.in_dim}, h, w) features, got {tuple(features.shape)}")
        b, d, h, w = features.shape
        if self.mode == "official":
            return self._aggregate_official(features)
        if not bool(self.prototype_valid.any()):
            return torch.cat([features, torch.zeros_like(features)], dim=1)
        q = self.prototypes[self.prototype_valid].to(features.dtype)  # (P, D)
        flat = features.flatten(2).transpose(1, 2)  # (B, n, D)
        s = torch.softmax(flat @ q.t(), dim=-1)
        agg = (s @ q).transpose(1, 2).reshape(b, d, h, w)
        return torch.cat([features, agg], dim=1)

    def _aggregate_official(self, features: Tensor) -> Tensor:
        b, d, h, w = features.shape
        q = self.prototypes[self.prototype_valid].to(features.dtype).detach()  # (P, D)
        query = self.q(features).permute(0, 2, 3, 1).reshape(b, h * w, d)
        if q.shape[0] == 0:
            agg = torch.zeros_like(features)
        else:
            sim = query @ self.k(q).t() / self.prototypes_per_class * self.num_channels
            agg = (sim @ self.v(q)).permute(0, 2, 1).reshape(b, d, h, w)
        return self.project(torch.cat([features, self.aggre(agg)], dim=1))

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.aggregate(features))


def gap_multilabel_loss(cam: Tensor, labels: Tensor, *, has_background: bool = False) -> Tensor:
    """Multi-label soft-margin (BCE with logits) of GAP(cam) (B, C) against the labels (mean)."""
    targets = channel_targets(cam, labels, has_background).to(cam.dtype)
    return F.binary_cross_entropy_with_logits(cam.mean(dim=(2, 3)), targets)


def rca_total_loss(
    cam_o: Tensor,
    cam_p: Tensor,
    labels: Tensor,
    rm_loss: Tensor | None,
    epoch: int,
    cfg: RCAConfig = RCAConfig(),
    *,
    has_background: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = L_CE(GAP(O)) + aux_weight * L_CE(GAP(P)) + contrast_weight * L_RM.

    L_RM is left out while ``epoch < contrast_start_epoch`` (0-based) or when ``rm_loss``
    is None. Returns the scalar and detached parts ``ce_o``, ``ce_p``, ``rm``, ``total``.
    """
    ce_o = gap_multilabel_loss(cam_o, labels, has_background=has_background)
    ce_p = gap_multilabel_loss(cam_p, labels, has_background=has_background)
    total = ce_o + cfg.aux_weight * ce_p
    use_rm = rm_loss is not None and epoch >= cfg.contrast_start_epoch
    if use_rm:
        total = total + cfg.contrast_weight * rm_loss
    rm_part = rm_loss.detach() if use_rm else torch.zeros((), dtype=total.dtype, device=total.device)
    return total, {"ce_o": ce_o.detach(), "ce_p": ce_p.detach(), "rm": rm_part, "total": total.detach()}


# ----------------------------------------------------------------------------- plug-in


def rca_terms(memory: RegionMemoryBank, cams: Tensor, cams_aggregated: Tensor | None, features: Tensor,
              labels: Tensor, image_ids: Tensor, epoch: int, cfg: RCAConfig, *, has_background: bool = False,
              image_scores: Tensor | None = None) -> dict[str, Tensor]:
    """RCA's loss terms for one batch, then the memory-bank update with the batch's regions.

    cams (B, C, h, w) give the regions (C = K−1 foreground maps, or K maps with
    ``has_background``); features (B, D, h, w) are pooled over them; cams_aggregated (B, C, h, w)
    or None (no aggregation head). image_scores (B, C) in [0, 1] decide which regions enter the
    bank (default sigmoid(GAP(O)) of the aggregated maps with ``bank_gate: aggregated``, else of
    ``cams``). Returns 'rca_aux' = L_CE(GAP(O)) of the aggregated maps O (absent without an aggregation head) and
    'rca_rm' (0 before ``cfg.contrast_start_epoch``). L_RM is computed against the bank as it was
    before this batch's update.
    """
    terms: dict[str, Tensor] = {}
    if cams_aggregated is not None:
        terms["rca_aux"] = gap_multilabel_loss(cams_aggregated.float(), labels, has_background=has_background)
    regions = region_embeddings(features.float(), cams.float(), labels, has_background=has_background,
                                mask_mode=cfg.region_mask)
    if epoch >= cfg.contrast_start_epoch:
        terms["rca_rm"] = region_mixup_loss(regions, memory, cfg.temperature, alpha=cfg.mixup_alpha,
                                            reduction=cfg.rm_reduction)
    else:
        terms["rca_rm"] = features.new_zeros((), dtype=torch.float32)
    with torch.no_grad():
        if image_scores is None:  # the bank's gate: sigmoid(GAP(O)) (official) or sigmoid(GAP(P))
            gate_maps = cams_aggregated if cfg.bank_gate == "aggregated" and cams_aggregated is not None else cams
            image_scores = torch.sigmoid(gate_maps.float().mean(dim=(2, 3)))
        scores = image_scores[regions.batch_index, regions.channels]
        memory.update(regions.embeddings.detach(), regions.channels,
                      image_ids.to(regions.channels.device)[regions.batch_index], scores)
    return terms


def batch_image_ids(batch: dict) -> Tensor:
    """The dataset indices of a batch (RCA's image ids), (B,) long."""
    ids = batch.get("index")
    if ids is None:
        raise TagsegError("RCA needs the dataset index of every image in the batch (item 'index')")
    return torch.as_tensor(ids, dtype=torch.long)


class RCAModules(nn.Module):
    """RCA's modules in a network's add-on container: the region ``memory`` bank and, on a family
    that takes an add-on CAM head (AUX_CAM_HEAD), the ``aggregation`` head, whose maps are the
    network's second CAMs (``view_output``). At the end of every epoch the head's prototypes come
    from k-means of the bank; the bank is released after the last training epoch (it stays in
    checkpoints, not in the final model file)."""

    def __init__(self, memory: RegionMemoryBank, aggregation: RCAAggregation | None, *, kmeans_iters: int,
                 seed: int, last_epoch: int | None) -> None:
        super().__init__()
        self.aggregation = aggregation
        self.memory = memory
        self.kmeans_iters, self.seed, self.last_epoch = kmeans_iters, seed, last_epoch

    @property
    def cam_head(self) -> bool:
        return self.aggregation is not None

    def view_output(self, features: Tensor) -> Tensor | None:
        return self.aggregation(features) if self.aggregation is not None else None

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        if self.aggregation is not None:
            self.aggregation.update_prototypes(self.memory, iters=self.kmeans_iters,
                                               seed=self.seed * 100_003 + 1000 * epoch)
        if self.last_epoch is not None and epoch >= self.last_epoch:
            self.memory.release()


def _attach(s: RCAConfig, ctx: BuildContext) -> RCAModules:
    fg = ctx.num_classes - 1
    memory = RegionMemoryBank(fg, ctx.feature_dim, s.capacity, s.momentum, s.score_threshold,
                              update_mode=s.bank_update, init_seed=ctx.seed)
    aggregation = (RCAAggregation(ctx.feature_dim, fg, s.prototypes_per_class, mode=s.aggregation)
                   if ctx.offers(AUX_CAM_HEAD) else None)
    return RCAModules(memory, aggregation, kmeans_iters=s.kmeans_iters, seed=ctx.seed, last_epoch=ctx.last_epoch)


def _loss_terms(ctx: LossContext, s: RCAConfig) -> tuple[dict[str, Tensor], Tensor]:
    ids = batch_image_ids(ctx.batch)
    modules = ctx.core.addons["rca"]
    if modules.aggregation is not None:
        terms = rca_terms(modules.memory, ctx.maps, ctx.output.cams_aggregated, ctx.features, ctx.labels, ids,
                          ctx.epoch, s)
        # Eq. 11: CE(GAP(O)) + aux_weight·CE(GAP(P)) + contrast_weight·L_RM, with O the aggregated CAM
        # ('rca_aux', weight 1) and P the intermediate (base) CAM, whose class loss is the family's
        # whole classification loss (ctx.base): scaled down to aux_weight here
        ctx.base = ctx.base - (1.0 - s.aux_weight) * ctx.base
        return terms, terms["rca_aux"] + s.contrast_weight * terms["rca_rm"]
    fg_maps = ctx.maps[:, 1:] if ctx.has_background else ctx.maps
    gate = ctx.scores[:, 1:].detach().float() if ctx.scores is not None else None
    terms = rca_terms(modules.memory, fg_maps, None, ctx.features, ctx.labels, ids, ctx.epoch, s, image_scores=gate)
    return {"rca_rm": terms["rca_rm"]}, s.contrast_weight * terms["rca_rm"]


ADDON = register_addon(Addon(name="rca", settings=RCAConfig,
                             requires={"enabled": frozenset({FEATURES, SCORE_MAPS, WHOLE_CLASS_LOSS})},
                             attach=_attach, loss_terms=_loss_terms, cam_head=True,
                             hints={"enabled": "RCA's Eq. 11 re-weights the whole classification loss"}))
