"""What an engine holds, counted, and the thread count its trials run with: the engines'
``workspace_bytes`` use these, and ``resources`` (the memory estimate) reads the engines
through them, so neither imports the other both ways."""
from __future__ import annotations

import contextlib
import itertools

import torch


def held_bytes(obj, skip: torch.nn.Module | None = None) -> int:
    """Bytes of the distinct tensor storages that ``obj`` holds: through its attributes,
    lists, tuples and dicts, not through modules, and not those of ``skip``'s weights
    (a state's views of the model's parameters)."""
    weights = set() if skip is None else {t.untyped_storage().data_ptr()
                                           for t in itertools.chain(skip.parameters(), skip.buffers())}
    seen, total, todo, visited = set(), 0, [obj], set()
    while todo:
        o = todo.pop()
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            key = st.data_ptr()
            if key not in weights and key not in seen:
                seen.add(key)
                total += st.nbytes()
        elif isinstance(o, torch.nn.Module) or id(o) in visited:
            continue
        elif isinstance(o, (list, tuple, set)):
            visited.add(id(o))
            todo.extend(o)
        elif isinstance(o, dict):
            visited.add(id(o))
            todo.extend(o.values())
        elif hasattr(o, "__dict__") and type(o).__module__.startswith(("pixelaux", "kernels")):
            visited.add(id(o))
            todo.extend(vars(o).values())
    return total


@contextlib.contextmanager
def num_threads(n: int):
    """``n`` intra-op threads inside the block, the previous count restored after (the
    trials here run in one: on a busy machine more threads only spin)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
