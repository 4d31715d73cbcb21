"""Setuptools entry point; metadata lives in setup.cfg."""
import setuptools

setuptools.setup()
