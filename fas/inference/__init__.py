"""Inference: one interface over checkpoints, published weights and ONNX files; face detection; prediction."""
