"""Which page sizes a kernel can have (:func:`drgn_hvdump.model.pages.kernel_page_size`)."""

from __future__ import annotations

import pytest

from drgn_hvdump.model.pages import kernel_page_size


@pytest.mark.parametrize("value", [4096, 65536, 1 << 20, "4096", "65536", "16384"])
def test_kernel_page_sizes(value: int | str) -> None:
    assert kernel_page_size(value) == int(value)


@pytest.mark.parametrize(
    "value", [None, "", "abc", "-4096", "4096 ", "3000", 2048, 1 << 21, 12288, "999999999", True]
)
def test_not_a_kernel_page_size(value: int | str | None) -> None:
    assert kernel_page_size(value) is None
