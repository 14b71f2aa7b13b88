import os

# onnxruntime (on-screen text, faster-whisper's VAD) records usage telemetry on Linux since 2026 (a device id and
# an event cache under ~/.cache/Microsoft, uploaded when online) unless this is set before it first loads. An
# offline search service sends nothing; set ORT_DISABLE_TELEMETRY=0 explicitly to opt in.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
