"""LoRA adapters on one emulated instance, as the gateway sees vLLM serve them.

`max_loras` slots. An adapter is loaded at start (`--lora-modules name=path`) or at run time
(`POST /v1/load_lora_adapter`, which takes `load_s` emulated seconds); loading into full slots
unloads the least recently used adapter (requested longest ago) first. A loaded adapter is served
under its name (`model`), listed by `/v1/models` with its base as `parent`, and reported in
`vllm:lora_requests_info` while requests use it; an unloaded one is an unknown model (404).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, Callable, Mapping


class LoraError(Exception):
    """A load or unload vLLM would refuse; `status` 400 or 404."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class LoraSlots:
    def __init__(self, max_loras: int, *, load_s: float = 0.0, modules: Mapping[str, str] | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        """`sleep(emulated_s)`: waits that long in emulated time (the server's time scale)."""
        if max_loras < 1:
            raise ValueError("max_loras must be at least 1")
        self.max_loras = max_loras
        self.load_s = load_s
        self._sleep = sleep
        self._loaded: OrderedDict[str, str] = OrderedDict()  # name -> path, least recently used first
        self._running: dict[str, int] = {}
        self.loads = 0  # completed runtime loads (test counter)
        self.unloads = 0  # adapters unloaded to make room
        for name, path in (modules or {}).items():
            self._admit(name, path)

    def has(self, name: str) -> bool:
        return name in self._loaded

    def loaded(self) -> dict[str, str]:
        return dict(self._loaded)

    async def load(self, name: str, path: str) -> None:
        if name in self._loaded:
            raise LoraError(f"The lora adapter '{name}' has already been loaded.", 400)
        await self._sleep(self.load_s)
        self._admit(name, path)
        self.loads += 1

    def unload(self, name: str) -> None:
        if self._loaded.pop(name, None) is None:
            raise LoraError(f"The lora adapter '{name}' cannot be found.", 404)

    def started(self, name: str) -> None:
        """A request for `name` began: it is now the most recently used."""
        self._loaded.move_to_end(name)
        self._running[name] = self._running.get(name, 0) + 1

    def finished(self, name: str) -> None:
        self._running[name] -= 1
        if not self._running[name]:
            del self._running[name]

    def running(self) -> list[str]:
        return sorted(self._running)

    def _admit(self, name: str, path: str) -> None:
        while len(self._loaded) >= self.max_loras:
            self._loaded.popitem(last=False)
            self.unloads += 1
        self._loaded[name] = path
