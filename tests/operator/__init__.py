"""Operator tests on the KMock emulator."""
