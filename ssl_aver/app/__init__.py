"""The app layer: what orchestrates every stage (the `ssl-aver` CLI, the demo and its stages,
the demo corpora, the bench).

It sits above the library (ssl_aver outside this package, pretext, finetune) and may reach all
of it; nothing in the library imports it (tests/test_layout.py checks both).
"""
