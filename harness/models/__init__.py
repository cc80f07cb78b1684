"""Submissions and training: the model contract, per-fold data, the harness-owned training loop.

Modules: `protocol` (Batch, Tensors, ModelSpec, hooks), `data` (FeatureSet, per-fold splits),
`train` (train_model, TrainedModel), `submission` (load_submission), `validate`
(validate_submission), `blocks` (reusable layers), `pixels` (end-to-end track), `scaffold`.
Nothing heavy is imported here, so `import harness.models` stays cheap.
"""
