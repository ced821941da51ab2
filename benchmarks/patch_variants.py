"""The patch family's pooling / PCE variants (METHODS.md §1), as the overrides that switch them: the
four rows of the ordering avg < max < top-K <= top-K + PCE, L_ET on in all (the paper's rows).
Shared by the benchmarks that train them (ordering_voc, reference_voc, ablation_voc)."""

ORDERING: dict[str, list[str]] = {
    "avg": ["method.pooling=avg", "method.pce_weight=0", "method.et_weight=1"],
    "max": ["method.pooling=max", "method.pce_weight=0", "method.et_weight=1"],
    "topk": ["method.pooling=topk", "method.pce_weight=0", "method.et_weight=1"],
    "topk+pce": ["method.pooling=topk", "method.pce_weight=0.01", "method.et_weight=1"],
}
ORDERING_LABELS = {"avg": "avg pooling + L_ET", "max": "max pooling + L_ET (ViT-PCM)", "topk": "top-K + L_ET",
                   "topk+pce": "top-K + PCE + L_ET (TKP-PCL)"}
