"""Submissions and training: the model contract, per-fold data, the harness-owned training loop.

Modules: `protocol` (Batch, Tensors, ModelSpec, hooks), `data` (FeatureSet, per-fold splits),
`train` (train_model, TrainedModel), `submission` (load_submission), `blocks` (reusable
layers), `pixels` (end-to-end track), `scaffold`. `harness validate` lives in `harness.validate`,
above this package and the executors whose sandbox it runs in.
Nothing heavy is imported here, so `import harness.models` stays cheap.
"""
