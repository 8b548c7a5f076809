"""Leaves every transport shares: error vocabulary, TLS, XOAUTH2."""
