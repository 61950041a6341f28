"""Corpus readers: typed manifests of clips (a folder of media) and of labelled corpora
(`ssl_aver.corpora.labelled`: one module per corpus, one registry line in CORPORA)."""

from ssl_aver.corpora.folder import ClipRecord, Manifest, scan_folder

__all__ = ["ClipRecord", "Manifest", "scan_folder"]
