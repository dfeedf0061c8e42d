"""Development and demonstration parts, outside the service package.

:mod:`paramloop.local.upstream` serves the real local model (SmolLM2 on llama.cpp)
behind an OpenAI-compatible API (``paramloop upstream local``, the embedded
default's upstream, the tests); :mod:`paramloop.local.demo` holds the demo's task
types and their automatic quality checks (``make demo``).
"""
