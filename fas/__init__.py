"""fas: face anti-spoofing experiments (MiniFASNet, Fourier-transform loss, Hydra, Lightning, ONNX)."""
