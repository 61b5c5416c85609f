"""Fixtures for the model tests: shared tiny parts and a fresh-model factory (helpers live in tuna_tiny.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import CLIPModel, LlamaForCausalLM

from tuna.model import TunaForConditionalGeneration, build_tuna
from tuna_tiny import K, T, tiny_clip, tiny_lm


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls on 1 thread: with 2 threads on 2 busy cores each tiny op waits on the other thread (~100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parts() -> tuple[CLIPModel, LlamaForCausalLM]:
    torch.manual_seed(0)
    return tiny_clip(), tiny_lm()


@pytest.fixture
def make_model(parts) -> Callable[..., TunaForConditionalGeneration]:
    """``make_model(**build_tuna kwargs)``: a fresh TUNA (copies of the shared parts, new parts seeded), in eval mode."""

    def make(**kwargs: Any) -> TunaForConditionalGeneration:
        torch.manual_seed(1)
        kwargs = {"num_tags": K, "max_tag_tokens": T, **kwargs}
        return build_tuna(copy.deepcopy(parts[0]), copy.deepcopy(parts[1]), **kwargs).eval()

    return make
