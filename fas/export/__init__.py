"""Export: a trained backbone -> FP32 ONNX with its input convention in the metadata -> INT8."""
