"""The report stage (``tagseg report RUN_DIR``): a self-contained static HTML page about one run
(per-class IoU, confusion heatmaps, training curves, worst-first sample grid): what a run folder
holds (``collect``), the page (``html``), its figures and its sample grid."""
