"""Cryptography: AEAD, KDFs, key files, seed envelopes, address derivation.

The ``cryptography`` package is used only inside this package.
"""
