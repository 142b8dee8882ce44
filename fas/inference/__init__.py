"""Inference: one interface over PyTorch checkpoints and ONNX files (and, later, face detection)."""
