"""PatchCore (Roth et al., CVPR 2022) on a timm CNN, as one exportable module.

    image -> backbone feature maps at strides 8 and 16 (`features_only`; ResNet's
    layer2 + layer3) -> 3x3 average pool each (local neighbourhood aggregation)
    -> the stride-16 map resized (bilinear) to the stride-8 grid, channels
    concatenated: one D-dim embedding per patch (`--patch-features coarse`: the
    stride-16 map alone, resized to that grid) -> squared distance to every
    memory-bank row as ||a||^2 + (||b||^2 - 2 a.b), the bracket one Linear over
    the bank -> min over the bank (nearest neighbour) -> sqrt -> image score = max
    over patches; map = patch scores upsampled (bilinear) to the input and
    Gaussian-smoothed.

Only standard ONNX ops (Conv, AveragePool, Resize, Concat, MatMul, ReduceMin,
ReduceMax, Sqrt, Pad), so one graph runs on ONNX Runtime, OpenVINO and TensorRT.
The paper's image-score re-weighting by the nearest neighbour's own neighbours
is left out: the image score is the largest patch score (anomalib with
num_neighbors=1), which keeps the graph free of ArgMax/Gather/TopK.

The search costs patches x bank rows x D multiply-adds a frame: with a bank of
a tenth of the patches it is most of a frame's time (44,766 rows at 224 px: 5
GMAC against the backbone's 0.4). So the bank's rows are chosen by what they
cost: by default no more than make the search cost what the embedder costs
(`rows_for_cost`), and INT8 quantizes the search with the backbone.

The memory bank is a greedy k-center coreset of the normal images' patch
embeddings, chosen on a random projection (Johnson-Lindenstrauss) to keep the
greedy loop cheap.

With `--image-score`, a second, image-level score from the same backbone pass: the deepest stage's
per-channel mean and standard deviation (an image embedding, standardised on the
normal images), and its distance to the nearest normal image's. It sees what no
single patch shows: a tile-wide change of texture or brightness, or a crack thinner
than a patch that shifts the image's statistics. The image score is the weighted
sum of the two distances, each divided by its spread over the normal images (a
leave-one-image-out estimate at fit time), so neither dominates by its units.
On magnetic tiles (efficientnet_lite2, 320 px, benchmarks/anomaly_mt.py) image
AUROC went from 0.922 to 0.952. The heat map stays the patch scores'."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.models.backbone import create_features

# The patch features (--patch-features). "fine": PatchCore's own, the stages at strides 8 and 16 (ResNet's
# layer2 + layer3), each averaged over its 3x3 neighbourhood, on the stride-8 grid. "coarse": the stride-16
# stage alone, not pooled, upsampled 2x to the same grid: higher image AUROC on the three fits measured
# (magnetic tiles 0.955 -> 0.965, ELPV 0.819 -> 0.828) but a coarser heat map (magnetic tiles' pixel AUROC
# 0.741 -> 0.712; on 64 px test images its peak missed half the defects): docs/anomaly.md.
PATCH_FEATURES = {
    "fine": {"strides": (8, 16), "pool": 3, "upsample": 1},
    "coarse": {"strides": (16,), "pool": 1, "upsample": 2},
}
PROJECTION_DIM = 128


def feature_indices(name: str, features: str = "fine") -> list[int]:
    """`features_only` indices of the stages of `name` that the patch features
    (PATCH_FEATURES) take; a clear refusal for a model without them (a ViT: one
    stride-16 token grid)."""
    import timm

    if not timm.is_model(name):
        raise EdgetuneError(
            f"--model {name}: not a timm model name. PatchCore takes a CNN such as resnet18, efficientnet_lite0 or "
            "convnext_atto."
        )
    try:
        info = timm.create_model(name, pretrained=False, features_only=True).feature_info
        reductions = list(info.reduction())
    except Exception as e:  # noqa: BLE001 - timm raises several kinds for models without feature maps
        raise EdgetuneError(
            f"--model {name}: timm cannot give its intermediate feature maps ({str(e).splitlines()[0]}); PatchCore "
            "needs a CNN backbone."
        ) from None
    strides = PATCH_FEATURES[features]["strides"]
    idx = [reductions.index(s) for s in strides if s in reductions]
    if len(idx) != len(strides) or len(set(reductions)) < 2:
        raise EdgetuneError(
            f"--model {name}: PatchCore needs a CNN's mid-level feature maps at strides "
            f"{' and '.join(map(str, strides))} (ResNet's layer2 + layer3); this model's features are at strides "
            f"{sorted(set(reductions))}. A ViT's patch tokens form a single stride-16 grid already mixed globally by "
            "attention, which is not the local, multi-scale patch feature PatchCore relies on; ViTs are refused. Use "
            "a CNN: resnet18, efficientnet_lite0, convnext_atto, ..."
        )
    return idx


def image_index(name: str) -> int:
    """`features_only` index of `name`'s deepest stage: the image embedding's."""
    import timm

    return len(timm.create_model(name, pretrained=False, features_only=True).feature_info) - 1


class ImageStats(nn.Module):
    """(N, C, h, w) feature map -> (N, 2C) image embedding: each channel's mean and
    standard deviation, times `scale` (1 / their spread over the normal images, set
    by the fit)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(2 * channels))

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        mean = m.mean((2, 3))
        std = (m - mean[..., None, None]).square().mean((2, 3)).sqrt()
        return torch.cat([mean, std], 1) * self.scale


class PatchEmbedder(nn.Module):
    """Image -> patch embeddings (N, D, h, w): the patch stages' maps, each averaged
    over its `pool` x `pool` neighbourhood (1: not), resized (bilinear) to the first
    one's grid times `upsample`, channels concatenated; with `image_channels` (the
    deepest stage's, the last of `features`), also the image embedding (N, 2C). The
    part INT8 quantizes: everything with weights."""

    def __init__(self, features: nn.Module, image_channels: int | None = None, pool: int = 3, upsample: int = 1):
        super().__init__()
        self.features = features
        self.pool = nn.AvgPool2d(pool, 1, pool // 2) if pool > 1 else None
        self.upsample = int(upsample)
        self.stats = ImageStats(image_channels) if image_channels else None

    def forward(self, x: torch.Tensor):
        """Patch embeddings; with the image embedding, (patches, image)."""
        maps = list(self.features(x))
        image = self.stats(maps.pop()) if self.stats is not None else None
        if self.pool is not None:
            maps = [self.pool(f) for f in maps]
        size = tuple(int(v) * self.upsample for v in maps[0].shape[-2:])
        patches = torch.cat(
            [
                m if tuple(m.shape[-2:]) == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps
            ],
            1,
        )
        return patches if image is None else (patches, image)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self(x)
        return out if isinstance(out, tuple) else (out, None)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def map_sigma(size: tuple[int, int]) -> float:
    """Smoothing of the heat map: anomalib's sigma 4 at 256 px, scaled to the input."""
    return max(1.0, 4.0 * min(size) / 256)


class NearestBankRow(nn.Module):
    """(N, D, h, w) patch embeddings -> (N, h*w) squared distances to the nearest
    memory-bank row. ||a - b||^2 = ||a||^2 + (||b||^2 - 2 a.b): the bracket for every
    bank row is one Linear (weight -2b, bias ||b||^2), so INT8 quantizes the search
    as it does any Linear (int8 per-row weights, one activation scale), and the
    runtimes run it on their integer kernels; ||a||^2 is added after the min.
    The bank is stored centred on its mean (the embeddings are centred alike):
    distances are unchanged, but the norms shrink, which keeps the cancellation in
    the sum harmless in INT8 and where a runtime computes in FP16/BF16."""

    def __init__(self, bank: torch.Tensor):
        super().__init__()
        rows, dim = bank.shape
        self.register_buffer("mean", torch.zeros(dim))
        self.rows = nn.Linear(dim, rows)
        self.set_bank(bank)

    def set_bank(self, bank: torch.Tensor) -> None:
        bank = bank.float()
        if tuple(bank.shape) != (self.rows.out_features, self.rows.in_features):
            self.rows = nn.Linear(bank.shape[1], bank.shape[0])
        mean = bank.mean(0)
        centred = bank - mean
        with torch.no_grad():
            self.mean.copy_(mean)
            self.rows.weight.copy_(-2 * centred)
            self.rows.bias.copy_((centred * centred).sum(1))

    @property
    def bank(self) -> torch.Tensor:
        return self.rows.weight.detach() / -2 + self.mean

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        a = emb.flatten(2).transpose(1, 2) - self.mean  # (N, h*w, D)
        return (self.rows(a).amin(-1) + (a * a).sum(-1)).clamp_min(0)


class PatchDistances(nn.Module):
    """Image -> (N, h*w) squared nearest-bank distances, and with an image bank,
    (N, 1) squared distances to the nearest normal image's embedding: the part INT8
    quantizes (the embedder's convolutions and the patch search's Linear; the image
    search, rows x 2C multiply-adds (half a million for 761 images), stays float)."""

    def __init__(self, embedder: PatchEmbedder, bank: torch.Tensor, image_bank: torch.Tensor | None = None):
        super().__init__()
        self.embedder = embedder
        self.search = NearestBankRow(bank)
        self.image_search = NearestBankRow(image_bank) if image_bank is not None else None

    def forward(self, x: torch.Tensor):
        if self.image_search is None:
            return self.search(self.embedder(x))
        patches, image = self.embedder(x)
        return self.search(patches), self.image_search(image[..., None, None])


class PatchCore(nn.Module):
    """(N, 3, H, W) normalised images -> (score (N,), map (N, H, W)), raw: the
    largest patch distance to the memory bank (with an image bank, plus the
    weighted image distance), and the patch distances as a map."""

    def __init__(
        self,
        embedder: PatchEmbedder,
        bank: torch.Tensor,
        size: tuple[int, int],
        grid: tuple[int, int],
        image_bank: torch.Tensor | None = None,
    ):
        super().__init__()
        self.patches = PatchDistances(embedder, bank, image_bank)
        self.size, self.grid = tuple(size), tuple(grid)
        k = gaussian_kernel(map_sigma(self.size))
        self.register_buffer("blur_h", k.view(1, 1, 1, -1))
        self.register_buffer("blur_v", k.view(1, 1, -1, 1))
        if image_bank is not None:  # the patch and image distances' weights in the image score
            self.register_buffer("score_weights", torch.ones(2))

    @property
    def embedder(self) -> PatchEmbedder:
        return self.patches.embedder

    @property
    def dim(self) -> int:
        return int(self.patches.search.mean.shape[0])

    def set_bank(self, bank: torch.Tensor) -> None:
        self.patches.search.set_bank(bank)

    @property
    def image_search(self) -> NearestBankRow | None:
        return self.patches.image_search

    def set_image_bank(self, bank: torch.Tensor, scale: torch.Tensor, weights: tuple[float, float]) -> None:
        """The normal images' embeddings (already multiplied by `scale`), the
        per-dimension `scale`, and the patch and image distances' weights."""
        self.patches.image_search.set_bank(bank)
        with torch.no_grad():
            self.embedder.stats.scale.copy_(scale)
            self.score_weights.copy_(torch.tensor(weights, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.patches(x)
        return self.image_scores(*out) if isinstance(out, tuple) else self.image_scores(out)

    def image_scores(self, d2: torch.Tensor, image_d2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, h*w) squared patch distances (and (N, 1) squared image distances) ->
        (image score (N,), map (N, H, W))."""
        patch = d2.sqrt()
        score = patch.amax(-1)
        if image_d2 is not None:
            score = self.score_weights[0] * score + self.score_weights[1] * image_d2[:, 0].sqrt()
        m = F.interpolate(patch.reshape(-1, 1, *self.grid), size=self.size, mode="bilinear", align_corners=False)
        r = self.blur_h.shape[-1] // 2
        m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="reflect"), self.blur_h)
        m = F.conv2d(F.pad(m, (0, 0, r, r), mode="reflect"), self.blur_v)
        return score, m[:, 0]


def upgrade_state(state: dict) -> dict:
    """A state dict saved before the search became a Linear (keys embedder.*,
    bank_mean, bank_t (D, M), bank_sq) in today's keys: fitted runs keep loading."""
    if "bank_t" not in state:
        return state
    out = {f"patches.{k}": v for k, v in state.items() if k.startswith("embedder.")}
    out["patches.search.mean"] = state["bank_mean"]
    out["patches.search.rows.weight"] = -2 * state["bank_t"].t()
    out["patches.search.rows.bias"] = state["bank_sq"]
    return {**out, **{k: v for k, v in state.items() if k.startswith("blur_")}}


def greedy_coreset(features: torch.Tensor, count: int, seed: int = 0, progress=None, batch: int = 16) -> torch.Tensor:
    """Indices of `count` rows of `features` (P, D) chosen by greedy k-center:
    each pick is the row farthest from all picked so far (the paper's minimax
    facility location), measured on a Gaussian random projection to
    PROJECTION_DIM dims.

    The greedy reads all P rows once per pick, which is where its time goes
    (memory-bound). So the picks are made in rounds of up to `batch`: a round
    takes the pool of the 4 x batch rows farthest from the bank, picks among them
    as the greedy does, updating only the pool's distances, then updates every
    row's distance with one matrix product. The picks stay the greedy's own: a
    distance to the bank only falls as rows join it, so a row outside the pool is
    never farther than the farthest row left outside it when the round began, and
    the round ends early when no pool row is farther than that. `batch` sets the
    speed, never the result (`batch=1` is the plain loop)."""
    gen = torch.Generator().manual_seed(seed)
    z = features.float()
    if z.shape[1] > PROJECTION_DIM:
        z = z @ (torch.randn(z.shape[1], PROJECTION_DIM, generator=gen) / math.sqrt(PROJECTION_DIM))
    count = max(1, min(int(count), len(z)))
    first = int(torch.randint(len(z), (1,), generator=gen))
    picked = [first]
    # Squared distances as ||z||^2 - 2 z.c + ||c||^2: products, not differences, so that
    # one matrix product updates every row (3x faster than (z - c)^2 on 362k x 128).
    sq = (z * z).sum(1)
    nearest = sq - 2 * (z @ z[first]) + sq[first]
    while len(picked) < count:
        b = min(max(1, batch), count - len(picked))
        top = torch.topk(nearest, min(len(z), 4 * b + 1))
        pool = top.indices[: 4 * b]
        outside = float(top.values[4 * b]) if len(top.values) > 4 * b else -math.inf
        zp, near, sqp = z[pool], nearest[pool].clone(), sq[pool]
        chosen = []
        for _ in range(b):  # the greedy's own picks, while the farthest row is in the pool
            j = int(near.argmax())
            if chosen and float(near[j]) < outside:
                break
            chosen.append(int(pool[j]))
            torch.minimum(near, sqp - 2 * (zp @ zp[j]) + sqp[j], out=near)
        new = torch.tensor(chosen)
        torch.minimum(nearest, (sq[:, None] - 2 * (z @ z[new].T) + sq[new][None, :]).amin(1), out=nearest)
        picked += chosen
        if progress is not None:
            progress(len(picked))
    return torch.tensor(picked, dtype=torch.long)


def rows_for_cost(model: "PatchCore", share: float = 1.0) -> int:
    """Bank rows whose search costs `share` x the embedder's multiply-adds a frame."""
    from edgetune.models.stats import count_macs

    macs, _ = count_macs(model.embedder, model.size)
    return max(1, int(share * macs / (model.grid[0] * model.grid[1] * model.dim)))


def bank_mb(rows: int, dim: int) -> float:
    return rows * dim * 4 / 2**20


def build_patchcore(
    name: str,
    size: tuple[int, int],
    pretrained: bool = True,
    weights=None,
    bank: torch.Tensor | None = None,
    indices: list[int] | None = None,
    image_bank: torch.Tensor | bool = False,
    features: str = "fine",
) -> PatchCore:
    """A PatchCore module for backbone `name` at input `size` (an empty bank of the
    right width when `bank` is None: fitting fills it; restoring loads it).
    `image_bank`: True for the image-level score with an empty bank, its rows, or
    False for the patch score alone (the default, and runs fitted before the image
    score existed). `features`: the patch features (PATCH_FEATURES)."""
    kind = PATCH_FEATURES[features]
    indices = list(indices if indices is not None else feature_indices(name, features))
    deepest = image_index(name) if image_bank is not False else None
    with_image = deepest is not None and deepest not in indices  # a deeper stage than the patches'
    if with_image:
        indices.append(deepest)
    backbone = create_features(name, indices, pretrained, weights)
    embedder = PatchEmbedder(
        backbone, backbone.feature_info.channels()[-1] if with_image else None, kind["pool"], kind["upsample"]
    ).eval()
    with torch.no_grad():
        probe, image = embedder.embed(torch.zeros(1, 3, *size))
    if bank is None:
        bank = torch.zeros(1, probe.shape[1])
    if image_bank is True:
        image_bank = torch.zeros(1, image.shape[1])
    return PatchCore(embedder, bank, size, tuple(probe.shape[-2:]), image_bank if with_image else None).eval()
