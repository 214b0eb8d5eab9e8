"""Datasets: safe ingest, image decoding, indexing, splits, transforms and the demo generator."""
