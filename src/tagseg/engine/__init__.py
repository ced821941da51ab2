"""The training engine shared by every trainable network.

``loop.fit`` is the only training loop: epochs, learning-rate schedule (per-epoch phases or
per-step), mixed precision (``train.precision``: bf16 on GPU by default, fp16 with a gradient
scaler, fp32), DDP under torchrun, checkpoints + exact resume (refused under
another configuration), a best-epoch selection hook, TensorBoard + ``history.jsonl``, a tqdm
progress bar and a guard against non-finite losses. A task (:class:`tagseg.engine.task.Task`)
supplies the model, the data, the loss and the optimizer.
"""
