"""Export: checkpoint -> FP32 ONNX with its input convention in the metadata (`onnx`) -> exact CPU graph
rewrites (`rewrite`) -> INT8 (`quantize`) -> parity and cost report (`parity`); LiteRT for phones, FP32 and
INT8 (`tflite`); `pipeline` chains them for the end-of-training callback (`callback`) and `export.py`."""
