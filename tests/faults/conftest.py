"""Registers the marker of the fault schedule's small always-on part."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "faults_smoke: the small always-on part of the fault schedule (a few rounds, < 60 s); "
        "long runs: python -m tests.faults.run",
    )
