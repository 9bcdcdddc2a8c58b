"""The serving runtime: onnxruntime session cache, dynamic batching, input parsing,
Prometheus metrics. numpy, onnxruntime, Pillow and prometheus_client only: no torch."""
