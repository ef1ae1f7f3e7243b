"""Tests of the Windows backend, run with CPython for Windows (under Wine: scripts/wine-test)."""
