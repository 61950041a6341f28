"""Data shipped with the toolkit (CREMA-D metadata under the ODbL)."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
CREMA_D_DIR = DATA_DIR / "crema_d"
