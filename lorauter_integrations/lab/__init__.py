"""The lab: benchmarks, evaluation, adapter training and mapping, noisy pools.

It sits beside the runtime and imports from it; nothing outside ``lab`` imports ``lab``. Its extra
dependencies (matplotlib, rouge-score, sacrebleu) come with ``pip install "lorauter-integrations[lab]"``.
"""
