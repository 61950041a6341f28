"""Corpus readers: typed manifests of clips (a folder of media, CREMA-D)."""

from ssl_aver.corpora.folder import ClipRecord, Manifest, scan_folder

__all__ = ["ClipRecord", "Manifest", "scan_folder"]
