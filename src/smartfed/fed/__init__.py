"""Federated runtime on Flower 1.41 (Message API): the only package that imports ``flwr``."""
