"""ONNX export (fp32, INT8 Q/DQ) and the checks every exported file passes."""
