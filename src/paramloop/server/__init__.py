"""HTTP edges of paramloop (FastAPI): thin, and imported only on demand.

``import paramloop`` never imports this package; its modules import FastAPI,
uvicorn and llama.cpp themselves, so only a command that serves pays for them.
"""
