"""Distributed batch inference for BERT-family encoders on Ray Data."""
