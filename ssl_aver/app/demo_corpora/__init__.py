"""Offline demo corpora, one module per generated corpus: `unlabeled` (MSP-Face-like clips +
simulated OpenFace tracks), `crema_d` (a CREMA-D mini corpus of real actors' ratings),
`msp_improv` (MSP-IMPROV's layout); `common` holds the speech and face-video synthesis they
share, and `generate` the `ssl-aver demo-corpus` command (unlabeled + CREMA-D in one folder)."""
