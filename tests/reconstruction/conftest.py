"""Reconstruction tests run on at most 2 threads (the CI machine's cores; more only adds contention)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _at_most_two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)
