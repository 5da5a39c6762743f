"""Modules the tests share (helpers and a scripted worker, not tests): import them as tests.helpers.NAME."""
