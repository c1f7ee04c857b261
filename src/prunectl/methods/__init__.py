"""Pruning methods: one module (or package) per method, found by name through ``registry``."""
